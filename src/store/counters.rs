//! `limit_counters`: one row per key and one per user, holding every limit's buckets and
//! the quota's period; read and written once per batch of requests. What the counts mean,
//! and how a batch is admitted, is decided in `gateway/counting.rs`; the model is in
//! docs/limits.md.

use super::Pool;
use crate::error::{Error, Result};
use postgres::types::Type;

/// The round's two statements, for `make bench-cluster`'s pgbench (`tollgate
/// dev-counter-sql`).
pub const ROUND_SQL: [&str; 2] = [LOCK_SQL, WRITE_SQL];

/// Locks the batch's subjects' rows in (kind, owner) order, so that counting rounds from
/// this replica or another serialise on shared keys and users and never deadlock, and
/// returns them as they are now (`FOR UPDATE` hands back each row's latest version), with
/// the database's clock shifted by `$3` seconds (tests only; 0 otherwise).
const LOCK_SQL: &str = "
SELECT l.kind, l.owner_id, l.names, l.buckets, l.counts, l.prevs, l.quota_start, l.quota_used,
       date_part('epoch', clock_timestamp() + make_interval(secs => $3))
  FROM limit_counters l JOIN unnest($1::\"char\"[], $2::int8[]) AS s(kind, owner)
    ON l.kind = s.kind AND l.owner_id = s.owner
 ORDER BY l.kind, l.owner_id
   FOR UPDATE OF l";
const LOCK_TYPES: &[Type] = &[Type::CHAR_ARRAY, Type::INT8_ARRAY, Type::FLOAT8];

/// The same rows without locking them, for reading where limits stand (`GET /me`).
const READ_SQL: &str = "
SELECT l.kind, l.owner_id, l.names, l.buckets, l.counts, l.prevs, l.quota_start, l.quota_used,
       date_part('epoch', clock_timestamp() + make_interval(secs => $3))
  FROM limit_counters l JOIN unnest($1::\"char\"[], $2::int8[]) AS s(kind, owner)
    ON l.kind = s.kind AND l.owner_id = s.owner";

/// Writes the rows a round changed. Each row's arrays travel as array literals in a text
/// array (Postgres has no arrays of arrays of different lengths); every value in them is a
/// number or a validated limit name, so a literal never needs quoting.
const WRITE_SQL: &str = "
UPDATE limit_counters l
   SET names = w.names::text[], buckets = w.buckets::int8[], counts = w.counts::int8[],
       prevs = w.prevs::int8[], quota_start = w.qs, quota_used = w.qu
  FROM unnest($1::\"char\"[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
              $7::int8[], $8::int8[]) AS w(kind, owner, names, buckets, counts, prevs, qs, qu)
 WHERE l.kind = w.kind AND l.owner_id = w.owner";
const WRITE_TYPES: &[Type] = &[
    Type::CHAR_ARRAY,
    Type::INT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
    Type::INT8_ARRAY,
];

/// Every counter of one key or one user. For each sliding limit, identified by
/// `<name>/<windowSecs>` in `names`, the bucket it last counted in (`floor(epoch /
/// window)`), that bucket's count and the count of the bucket before it; then the start of
/// the quota period being counted (Unix seconds) and the count in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub kind: Subject,
    pub owner: i64,
    pub names: Vec<String>,
    pub buckets: Vec<i64>,
    pub counts: Vec<i64>,
    pub prevs: Vec<i64>,
    pub quota_start: i64,
    pub quota_used: i64,
}

fn rows_of(rows: &[postgres::Row]) -> Result<(Vec<Row>, Option<f64>)> {
    let mut now = None;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let kind: i8 = r.try_get(0)?;
        out.push(Row {
            kind: Subject::from_code(kind)
                .ok_or_else(|| Error::Internal(format!("counter row of kind {kind}")))?,
            owner: r.try_get(1)?,
            names: r.try_get(2)?,
            buckets: r.try_get(3)?,
            counts: r.try_get(4)?,
            prevs: r.try_get(5)?,
            quota_start: r.try_get(6)?,
            quota_used: r.try_get(7)?,
        });
        now = Some(r.try_get(8)?);
    }
    Ok((out, now))
}

fn subject_arrays(subjects: &[(Subject, i64)]) -> (Vec<i8>, Vec<i64>) {
    subjects.iter().map(|(k, o)| (k.code(), *o)).unzip()
}

/// The database's clock (shifted by `shift` seconds), for a round with no rows to read.
fn clock(client: &mut impl postgres::GenericClient, shift: f64) -> Result<f64> {
    let row = client.query_one(
        "SELECT date_part('epoch', clock_timestamp() + make_interval(secs => $1::float8))",
        &[&shift],
    )?;
    Ok(row.try_get(0)?)
}

/// One counting round, in one transaction: locks and reads the rows of `subjects`, lets
/// `decide` work out what to admit from them and the database's clock (Unix seconds), and
/// writes the rows it returns as changed. A subject without a row (a key deleted a moment
/// ago) is simply absent from what `decide` sees. Nothing is written if anything fails.
pub fn count<T>(
    pool: &Pool,
    subjects: &[(Subject, i64)],
    shift: f64,
    decide: impl FnOnce(Vec<Row>, f64) -> (T, Vec<Row>),
) -> Result<T> {
    let mut conn = pool.get()?;
    let lock = conn.prepared(LOCK_SQL, LOCK_TYPES)?;
    let write = conn.prepared(WRITE_SQL, WRITE_TYPES)?;
    let mut tx = conn.transaction()?;
    let (kinds, owners) = subject_arrays(subjects);
    let (rows, now) = rows_of(&tx.query(&lock, &[&kinds, &owners, &shift])?)?;
    let now = match now {
        Some(now) => now,
        None => clock(&mut tx, shift)?,
    };
    let (answer, changed) = decide(rows, now);
    if !changed.is_empty() {
        let mut w = WriteArrays::default();
        for r in &changed {
            w.push(r);
        }
        tx.execute(
            &write,
            &[
                &w.kinds, &w.owners, &w.names, &w.buckets, &w.counts, &w.prevs, &w.qs, &w.qu,
            ],
        )?;
    }
    tx.commit()?;
    Ok(answer)
}

/// The rows of `subjects` as they are, and the database's clock; locks nothing.
pub fn read(pool: &Pool, subjects: &[(Subject, i64)], shift: f64) -> Result<(Vec<Row>, f64)> {
    let mut conn = pool.get()?;
    let (kinds, owners) = subject_arrays(subjects);
    let (rows, now) = rows_of(&conn.query_typed(
        READ_SQL,
        &[
            (&kinds, Type::CHAR_ARRAY),
            (&owners, Type::INT8_ARRAY),
            (&shift, Type::FLOAT8),
        ],
    )?)?;
    let now = match now {
        Some(now) => now,
        None => clock(&mut **conn, shift)?,
    };
    Ok((rows, now))
}

#[derive(Default)]
struct WriteArrays {
    kinds: Vec<i8>,
    owners: Vec<i64>,
    names: Vec<String>,
    buckets: Vec<String>,
    counts: Vec<String>,
    prevs: Vec<String>,
    qs: Vec<i64>,
    qu: Vec<i64>,
}

impl WriteArrays {
    fn push(&mut self, r: &Row) {
        self.kinds.push(r.kind.code());
        self.owners.push(r.owner);
        self.names.push(literal(&r.names));
        self.buckets.push(literal(&r.buckets));
        self.counts.push(literal(&r.counts));
        self.prevs.push(literal(&r.prevs));
        self.qs.push(r.quota_start);
        self.qu.push(r.quota_used);
    }
}

/// `{a,b,c}`: a Postgres array literal of values that need no quoting.
fn literal<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s = String::from("{");
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&v.to_string());
    }
    s.push('}');
    s
}

/// Zeroes the quota period of a key (`'k'`) or user (`'u'`): the count starts again now,
/// the period's boundaries stay. False if the subject does not exist.
pub fn reset_quota(pool: &Pool, kind: Subject, id: i64) -> Result<bool> {
    let n = pool.get()?.execute(
        "UPDATE limit_counters SET quota_used = 0 WHERE kind = $1 AND owner_id = $2",
        &[&kind.code(), &id],
    )?;
    Ok(n > 0)
}

/// Whose counters: a key's own, or a user's counted across all of its keys. Ordered as
/// their rows are locked (keys, then users).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    #[default]
    Key,
    User,
}

impl Subject {
    /// The `limit_counters.kind` value.
    pub fn code(self) -> i8 {
        match self {
            Subject::Key => b'k' as i8,
            Subject::User => b'u' as i8,
        }
    }

    fn from_code(c: i8) -> Option<Subject> {
        match c as u8 {
            b'k' => Some(Subject::Key),
            b'u' => Some(Subject::User),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_are_plain_lists() {
        assert_eq!(literal::<i64>(&[]), "{}");
        assert_eq!(literal(&[3, -1]), "{3,-1}");
        assert_eq!(
            literal(&["burst/1".to_string(), "day/86400".into()]),
            "{burst/1,day/86400}"
        );
    }
}
