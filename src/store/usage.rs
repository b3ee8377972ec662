//! `usage_daily` (sql/007): requests the limit phase admitted and refused, per UTC day, key
//! and plan. The logger folds each batch into one row per day × key × user × plan and
//! upserts them in the transaction that copies the raw rows; `/analytics/usage` sums them
//! per day or month and key, user or plan, for billing.

use super::logs::LogRow;
use super::Pool;
use chrono::NaiveDate;
use postgres::Transaction;
use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

/// One row's identity: days since 1970-01-01 (UTC), key, user, plan (0 for none).
type Key = (i32, i64, i64, i64);

/// Admitted and refused per row. A `BTreeMap` so that the upsert touches rows in one fixed
/// order and two replicas' loggers never deadlock. Rows the limit phase never saw (bad
/// keys, unknown routes, ...) are not usage.
fn aggregate(rows: &[&LogRow]) -> BTreeMap<Key, (i64, i64)> {
    let mut out = BTreeMap::new();
    for r in rows {
        let (Some(admitted), Some(key), Some(user)) = (r.admitted, r.api_key_id, r.user_id) else {
            continue;
        };
        let secs = r
            .created_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let day = secs.div_euclid(86_400) as i32;
        let n: &mut (i64, i64) = out
            .entry((day, key, user, r.plan_id.unwrap_or(0)))
            .or_default();
        if admitted {
            n.0 += 1;
        } else {
            n.1 += 1;
        }
    }
    out
}

const UPSERT_SQL: &str = "INSERT INTO usage_daily AS u
        (day, api_key_id, user_id, plan_id, admitted, refused)
    SELECT date '1970-01-01' + d, k, us, p, a, r
      FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[])
        AS v(d, k, us, p, a, r)
    ON CONFLICT (day, api_key_id, user_id, plan_id)
    DO UPDATE SET admitted = u.admitted + excluded.admitted,
                  refused = u.refused + excluded.refused";

/// Adds the batch's usage in one statement, inside the caller's transaction (the one that
/// copies the raw rows), so a failed batch is retried whole and nothing is counted twice.
pub fn upsert(tx: &mut Transaction, rows: &[&LogRow]) -> Result<(), postgres::Error> {
    let aggs = aggregate(rows);
    if aggs.is_empty() {
        return Ok(());
    }
    let mut days = Vec::with_capacity(aggs.len());
    let mut keys = Vec::with_capacity(aggs.len());
    let mut users = Vec::with_capacity(aggs.len());
    let mut plans = Vec::with_capacity(aggs.len());
    let mut admitted = Vec::with_capacity(aggs.len());
    let mut refused = Vec::with_capacity(aggs.len());
    for ((d, k, u, p), (a, r)) in aggs {
        days.push(d);
        keys.push(k);
        users.push(u);
        plans.push(p);
        admitted.push(a);
        refused.push(r);
    }
    tx.execute(
        UPSERT_SQL,
        &[&days, &keys, &users, &plans, &admitted, &refused],
    )?;
    Ok(())
}

/// What the sums are grouped by, besides the bucket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GroupBy {
    /// Per key and the user that owned it (a key that changed owner is billed to each).
    Key,
    User,
    /// Per plan the limits came from; 0 for requests on no plan.
    Plan,
}

/// The bucket: a UTC day, or a UTC calendar month.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bucket {
    Day,
    Month,
}

/// One question: days `from..=to`, optionally one user's or one key's.
pub struct Query {
    pub group: GroupBy,
    pub bucket: Bucket,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub user_id: Option<i64>,
    pub key_id: Option<i64>,
}

/// One group's sums in one bucket.
pub struct Usage {
    /// The bucket's first day.
    pub bucket: NaiveDate,
    /// The key, user or plan id (0: no plan).
    pub id: i64,
    /// The key's user when grouped by key.
    pub user_id: i64,
    /// The key's name, the user's email or the plan's name; None once deleted.
    pub name: Option<String>,
    pub admitted: i64,
    pub refused: i64,
}

/// Sums per bucket and group, oldest bucket first, then by id; only non-empty groups.
pub fn read(pool: &Pool, q: &Query) -> crate::error::Result<Vec<Usage>> {
    let unit = match q.bucket {
        Bucket::Day => "day",
        Bucket::Month => "month",
    };
    let (id, user, names) = match q.group {
        GroupBy::Key => ("api_key_id", "user_id", "(SELECT id, name FROM api_keys)"),
        GroupBy::User => (
            "user_id",
            "user_id",
            "(SELECT id, email AS name FROM users)",
        ),
        GroupBy::Plan => ("plan_id", "0::int8", "(SELECT id, name FROM plans)"),
    };
    let sql = format!(
        "SELECT s.bucket, s.id, s.user_id, n.name, s.admitted, s.refused
           FROM (SELECT date_trunc('{unit}', day)::date AS bucket, {id} AS id,
                        {user} AS user_id, sum(admitted)::int8 AS admitted,
                        sum(refused)::int8 AS refused
                   FROM usage_daily
                  WHERE day BETWEEN $1 AND $2
                    AND ($3::int8 IS NULL OR user_id = $3)
                    AND ($4::int8 IS NULL OR api_key_id = $4)
                  GROUP BY 1, 2, 3) s
           LEFT JOIN {names} n ON n.id = s.id
          ORDER BY s.bucket, s.id, s.user_id"
    );
    let rows = pool
        .get()?
        .query(sql.as_str(), &[&q.from, &q.to, &q.user_id, &q.key_id])?;
    Ok(rows
        .iter()
        .map(|r| Usage {
            bucket: r.get(0),
            id: r.get(1),
            user_id: r.get(2),
            name: r.get(3),
            admitted: r.get(4),
            refused: r.get(5),
        })
        .collect())
}

/// Whole UTC days only: a day's row goes when all of it is older than the retention.
const DELETE_SQL: &str = "DELETE FROM usage_daily WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM usage_daily
     WHERE day < ((now() AT TIME ZONE 'UTC') - make_interval(secs => $1))::date
     LIMIT $2))";

/// Deletes up to `batch` rows older than `older_than_secs`; returns how many.
pub fn delete_expired(pool: &Pool, older_than_secs: f64, batch: i64) -> crate::error::Result<u64> {
    Ok(pool
        .get()?
        .execute(DELETE_SQL, &[&older_than_secs, &batch])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn row(key: Option<i64>, plan: Option<i64>, admitted: Option<bool>, at: u64) -> LogRow {
        LogRow {
            request_id: String::new(),
            api_key_id: key,
            user_id: key.map(|k| k * 10),
            route_id: None,
            plan_id: plan,
            admitted,
            method: "GET".into(),
            path: "/".into(),
            query: None,
            status: 200,
            latency_ms: 1.0,
            bytes_in: 0,
            bytes_out: 0,
            client_ip: String::new(),
            user_agent: None,
            created_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            upstream: None,
            attempts: None,
        }
    }

    #[test]
    fn rows_fold_per_utc_day_key_and_plan_and_unlimited_rows_are_not_usage() {
        let day = 86_400;
        let rows = [
            row(Some(1), None, Some(true), 5),
            row(Some(1), None, Some(false), day - 1),
            row(Some(1), None, Some(true), day),
            row(Some(1), Some(3), Some(true), day + 5),
            row(Some(2), Some(3), Some(true), day + 5),
            // Refused before the limit phase, or no key at all: not usage.
            row(Some(1), None, None, 5),
            row(None, None, Some(true), 5),
        ];
        let refs: Vec<&LogRow> = rows.iter().collect();
        let got: Vec<_> = aggregate(&refs).into_iter().collect();
        assert_eq!(
            got,
            vec![
                ((0, 1, 10, 0), (1, 1)),
                ((1, 1, 10, 0), (1, 0)),
                ((1, 1, 10, 3), (1, 0)),
                ((1, 2, 20, 3), (1, 0)),
            ]
        );
    }
}
