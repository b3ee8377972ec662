//! `request_logs`: the row as stored, the batch write the logger runs (binary COPY, the
//! rollups, the usage and the keys' `last_used_at`, in one transaction), and the retention
//! delete.

use super::Pool;
use crate::error::describe;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use std::collections::HashMap;
use std::time::SystemTime;

/// One request as the log keeps it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub request_id: String,
    pub api_key_id: Option<i64>,
    pub user_id: Option<i64>,
    pub route_id: Option<i64>,
    /// The plan the key's limits came from. Kept in `usage_daily`, not in `request_logs`
    /// (as is `admitted`), so a row read back has None in both.
    pub plan_id: Option<i64>,
    /// The limit phase's verdict; None when the request never reached it.
    pub admitted: Option<bool>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: i32,
    pub latency_ms: f64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// As `TOLLGATE_LOG_CLIENT_IP` says (`logs::client_ip`): the address, `hmac:` and 32
    /// hex digits, or empty.
    pub client_ip: String,
    pub user_agent: Option<String>,
    pub created_at: SystemTime,
    /// The pool target that answered, or was tried last; None before the forward phase.
    pub upstream: Option<String>,
    /// How many targets were tried (a retry on another target makes it 2).
    pub attempts: Option<i16>,
}

const COPY_SQL: &str = "COPY request_logs (request_id, api_key_id, user_id, route_id, method,
    path, query, status, latency_ms, bytes_in, bytes_out, client_ip, user_agent, created_at,
    upstream, attempts) FROM STDIN BINARY";

const TYPES: &[Type] = &[
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::FLOAT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT2,
];

/// Stamps each key's newest request time; older stamps never overwrite newer ones.
const LAST_USED_SQL: &str = "UPDATE api_keys k SET last_used_at = v.t
    FROM unnest($1::int8[], $2::timestamptz[]) AS v(id, t)
    WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t)";

/// Writes one batch: raw rows, rollups, usage and key stamps commit together or not at all.
pub fn write_batch(pool: &Pool, batch: &[&LogRow]) -> Result<(), String> {
    let pg = |e: postgres::Error| describe(&e);
    let mut conn = pool.get().map_err(|e| e.to_string())?;
    let mut tx = conn.transaction().map_err(pg)?;
    let sink = tx.copy_in(COPY_SQL).map_err(pg)?;
    let mut w = BinaryCopyInWriter::new(sink, TYPES);
    for r in batch {
        let values: [&(dyn ToSql + Sync); 16] = [
            &r.request_id,
            &r.api_key_id,
            &r.user_id,
            &r.route_id,
            &r.method,
            &r.path,
            &r.query,
            &r.status,
            &r.latency_ms,
            &r.bytes_in,
            &r.bytes_out,
            &r.client_ip,
            &r.user_agent,
            &r.created_at,
            &r.upstream,
            &r.attempts,
        ];
        w.write(&values).map_err(pg)?;
    }
    w.finish().map_err(pg)?;
    super::rollups::upsert(&mut tx, batch).map_err(pg)?;
    super::usage::upsert(&mut tx, batch).map_err(pg)?;
    let mut newest: HashMap<i64, SystemTime> = HashMap::new();
    for r in batch {
        if let Some(k) = r.api_key_id {
            let t = newest.entry(k).or_insert(r.created_at);
            *t = (*t).max(r.created_at);
        }
    }
    if !newest.is_empty() {
        let (ids, times): (Vec<i64>, Vec<SystemTime>) = newest.into_iter().unzip();
        tx.execute(LAST_USED_SQL, &[&ids, &times]).map_err(pg)?;
    }
    tx.commit().map_err(pg)
}

/// Oldest rows first (the `created_at` index), one batch per statement.
const DELETE_SQL: &str = "DELETE FROM request_logs WHERE id = ANY(ARRAY(
    SELECT id FROM request_logs WHERE created_at < now() - make_interval(secs => $1)
     ORDER BY created_at LIMIT $2))";

/// Deletes up to `batch` rows older than `older_than_secs`; returns how many.
pub fn delete_expired(pool: &Pool, older_than_secs: f64, batch: i64) -> crate::error::Result<u64> {
    Ok(pool
        .get()?
        .execute(DELETE_SQL, &[&older_than_secs, &batch])?)
}
