//! `audit_log`: every statement on the table. What goes into a row (the actor, the
//! redaction of secrets) is decided in `operator/audit.rs`.

use super::Pool;
use crate::error::Result;
use chrono::{DateTime, Utc};
use postgres::{GenericClient, Row};
use serde_json::Value;

const COLS: &str = "id, at, actor, client_ip, action, target, before, after";

pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub client_ip: String,
    pub action: String,
    pub target: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl AuditRow {
    fn from_row(r: &Row) -> AuditRow {
        AuditRow {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            client_ip: r.get(3),
            action: r.get(4),
            target: r.get(5),
            before: r.get(6),
            after: r.get(7),
        }
    }
}

/// A row to append; `at` and `id` are the database's.
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub client_ip: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

pub fn insert(pool: &Pool, a: &NewAudit) -> Result<()> {
    insert_in(&mut **pool.get()?, a)
}

/// [`insert`] on a connection or transaction of the caller's (`tollgate apply` writes its
/// rows in its own transaction, so they exist exactly when its changes do).
pub fn insert_in(db: &mut impl GenericClient, a: &NewAudit) -> Result<()> {
    db.execute(
        "INSERT INTO audit_log (actor, client_ip, action, target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &a.actor,
            &a.client_ip,
            &a.action,
            &a.target,
            &a.before,
            &a.after,
        ],
    )?;
    Ok(())
}

/// Up to `limit` rows with ids below `before`, newest first, all or those on `target`.
pub fn list(pool: &Pool, target: Option<&str>, before: i64, limit: i64) -> Result<Vec<AuditRow>> {
    let sql = format!(
        "SELECT {COLS} FROM audit_log WHERE id < $1 AND ($2::text IS NULL OR target = $2)
         ORDER BY id DESC LIMIT $3"
    );
    let rows = pool
        .get()?
        .query(sql.as_str(), &[&before, &target, &limit])?;
    Ok(rows.iter().map(AuditRow::from_row).collect())
}

/// Deletes up to `batch` rows older than `older_than_secs`; returns how many.
pub fn delete_expired(pool: &Pool, older_than_secs: f64, batch: i64) -> Result<u64> {
    Ok(pool.get()?.execute(
        "DELETE FROM audit_log WHERE id = ANY(ARRAY(
            SELECT id FROM audit_log WHERE at < now() - make_interval(secs => $1) LIMIT $2))",
        &[&older_than_secs, &batch],
    )?)
}
