//! `limit_counters`: one row per key and one per user, holding every limit's buckets and
//! the quota's period; read and written once per batch of requests. What the counts mean,
//! and how a batch is admitted, is decided in `gateway/counting.rs`; the model is in
//! docs/limits.md.

use super::{Conn, Pool};
use crate::error::{Error, Result};
use postgres::SimpleQueryMessage;

/// Prepared once per connection at the SQL level, so that a round can run them inside
/// multi-statement simple queries: `BEGIN; EXECUTE tollgate_lock(..)` and `EXECUTE
/// tollgate_write(..); COMMIT` are two round trips, where the extended protocol would take
/// four (each one costs the gateway ~22 µs of CPU in the client library:
/// docs/performance.md). Simple queries carry values as text, so [`Literal`] writes them.
const PREPARE_SQL: &str = "PREPARE tollgate_lock(\"char\"[], int8[], float8) AS
SELECT l.kind, l.owner_id, l.names, l.buckets, l.counts, l.prevs, l.quota_start, l.quota_used,
       date_part('epoch', clock_timestamp() + make_interval(secs => $3))
  FROM limit_counters l JOIN unnest($1, $2) AS s(kind, owner)
    ON l.kind = s.kind AND l.owner_id = s.owner
 ORDER BY l.kind, l.owner_id
   FOR UPDATE OF l;
PREPARE tollgate_read(\"char\"[], int8[], float8) AS
SELECT l.kind, l.owner_id, l.names, l.buckets, l.counts, l.prevs, l.quota_start, l.quota_used,
       date_part('epoch', clock_timestamp() + make_interval(secs => $3))
  FROM limit_counters l JOIN unnest($1, $2) AS s(kind, owner)
    ON l.kind = s.kind AND l.owner_id = s.owner;
PREPARE tollgate_write(\"char\"[], int8[], text[], text[], text[], text[], int8[], int8[]) AS
UPDATE limit_counters l
   SET names = w.names::text[], buckets = w.buckets::int8[], counts = w.counts::int8[],
       prevs = w.prevs::int8[], quota_start = w.qs, quota_used = w.qu
  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS w(kind, owner, names, buckets, counts, prevs, qs, qu)
 WHERE l.kind = w.kind AND l.owner_id = w.owner;
PREPARE tollgate_clock(float8) AS
SELECT date_part('epoch', clock_timestamp() + make_interval(secs => $1))";

/// The statements a round runs, for `make bench-cluster`'s pgbench (`tollgate
/// dev-counter-sql`).
pub const ROUND_SQL: &str = PREPARE_SQL;

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

/// The rows of a `tollgate_lock`/`tollgate_read` answer, and the clock it read.
fn rows_of(messages: &[SimpleQueryMessage]) -> Result<(Vec<Row>, Option<f64>)> {
    let mut now = None;
    let mut out = Vec::new();
    for m in messages {
        let SimpleQueryMessage::Row(r) = m else {
            continue;
        };
        let text = |i: usize| r.get(i).unwrap_or_default();
        let bad = |what: &str| Error::Internal(format!("counter row: bad {what}"));
        let kind = text(0).bytes().next().map(|b| b as i8).unwrap_or_default();
        out.push(Row {
            kind: Subject::from_code(kind).ok_or_else(|| bad("kind"))?,
            owner: text(1).parse().map_err(|_| bad("owner"))?,
            names: parse_array(text(2), |s| Some(s.to_string())).ok_or_else(|| bad("names"))?,
            buckets: parse_array(text(3), |s| s.parse().ok()).ok_or_else(|| bad("buckets"))?,
            counts: parse_array(text(4), |s| s.parse().ok()).ok_or_else(|| bad("counts"))?,
            prevs: parse_array(text(5), |s| s.parse().ok()).ok_or_else(|| bad("prevs"))?,
            quota_start: text(6).parse().map_err(|_| bad("quota_start"))?,
            quota_used: text(7).parse().map_err(|_| bad("quota_used"))?,
        });
        now = Some(text(8).parse().map_err(|_| bad("clock"))?);
    }
    Ok((out, now))
}

/// The elements of a one-dimensional array in Postgres' text output. Ours hold numbers and
/// limit slots (`name/window`, names of letters, digits, `_` and `-`), which Postgres never
/// quotes; anything else is refused rather than misread.
fn parse_array<T>(text: &str, item: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    if inner.contains(['"', '\\', '{']) {
        return None;
    }
    inner.split(',').map(item).collect()
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
    conn.prepared_sql(PREPARE_SQL)?;
    let mut round = Open {
        conn: &mut conn,
        open: true,
    };
    let (kinds, owners) = subject_literals(subjects);
    let lock = format!(
        "BEGIN; EXECUTE tollgate_lock({kinds}, {owners}, {})",
        Literal::Float(shift)
    );
    let (rows, now) = rows_of(&round.conn.simple_query(&lock)?)?;
    let now = match now {
        Some(now) => now,
        None => clock(round.conn, shift)?,
    };
    let (answer, changed) = decide(rows, now);
    let finish = if changed.is_empty() {
        "COMMIT".to_string()
    } else {
        format!("{}; COMMIT", write_sql(&changed))
    };
    round.conn.batch_execute(&finish)?;
    round.open = false;
    Ok(answer)
}

/// A round's transaction until it commits: dropped open (an error, a panic in `decide`),
/// it is rolled back, so the connection goes back to the pool outside any transaction.
struct Open<'a> {
    conn: &'a mut Conn,
    open: bool,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.open {
            // A broken connection fails this too; the pool then discards it.
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

/// The rows of `subjects` as they are, and the database's clock; locks nothing.
pub fn read(pool: &Pool, subjects: &[(Subject, i64)], shift: f64) -> Result<(Vec<Row>, f64)> {
    let mut conn = pool.get()?;
    conn.prepared_sql(PREPARE_SQL)?;
    let (kinds, owners) = subject_literals(subjects);
    let read = format!(
        "EXECUTE tollgate_read({kinds}, {owners}, {})",
        Literal::Float(shift)
    );
    let (rows, now) = rows_of(&conn.simple_query(&read)?)?;
    let now = match now {
        Some(now) => now,
        None => clock(&mut conn, shift)?,
    };
    Ok((rows, now))
}

/// The database's clock (shifted by `shift` seconds), for a round with no rows to read.
fn clock(conn: &mut Conn, shift: f64) -> Result<f64> {
    let q = format!("EXECUTE tollgate_clock({})", Literal::Float(shift));
    let messages = conn.simple_query(&q)?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|t| t.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| Error::Internal("the database clock did not answer".into()))
}

fn subject_literals(subjects: &[(Subject, i64)]) -> (Literal, Literal) {
    let kinds = subjects
        .iter()
        .map(|(k, _)| if *k == Subject::Key { "k" } else { "u" }.to_string())
        .collect();
    let owners = subjects.iter().map(|(_, o)| *o).collect();
    (Literal::Texts(kinds), Literal::Ints(owners))
}

/// `EXECUTE tollgate_write(..)` for the changed rows. Each row's arrays travel as array
/// literals inside a text array (Postgres has no arrays of arrays of different lengths).
fn write_sql(changed: &[Row]) -> String {
    let texts =
        |f: &dyn Fn(&Row) -> String| Literal::Texts(changed.iter().map(f).collect::<Vec<String>>());
    let ints = |f: &dyn Fn(&Row) -> i64| Literal::Ints(changed.iter().map(f).collect());
    format!(
        "EXECUTE tollgate_write({}, {}, {}, {}, {}, {}, {}, {})",
        texts(&|r| if r.kind == Subject::Key { "k" } else { "u" }.to_string()),
        ints(&|r| r.owner),
        texts(&|r| Literal::array_text(&r.names)),
        texts(&|r| Literal::array_text(&r.buckets)),
        texts(&|r| Literal::array_text(&r.counts)),
        texts(&|r| Literal::array_text(&r.prevs)),
        ints(&|r| r.quota_start),
        ints(&|r| r.quota_used),
    )
}

/// A value written into simple-query SQL text: quoted and escaped here, once, whatever it
/// holds (the values are numbers and validated limit names, but the quoting does not rely
/// on that).
enum Literal {
    Float(f64),
    Ints(Vec<i64>),
    Texts(Vec<String>),
}

impl Literal {
    /// `{a,b}` with every element double-quoted and escaped: an array's text input form.
    fn array_text<T: std::fmt::Display>(items: &[T]) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(2 + 12 * items.len());
        s.push('{');
        for (i, v) in items.iter().enumerate() {
            s.push_str(if i == 0 { "\"" } else { ",\"" });
            // Written straight into the literal, escaped on the way: no string per element.
            let _ = write!(Escaped(&mut s), "{v}");
            s.push('"');
        }
        s.push('}');
        s
    }
}

/// Writes into a double-quoted array element, backslash-escaping `"` and `\\`.
struct Escaped<'a>(&'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, part: &str) -> std::fmt::Result {
        for c in part.chars() {
            if c == '"' || c == '\\' {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        Ok(())
    }
}

impl std::fmt::Display for Literal {
    /// A string constant (`'..'`, quotes doubled) that Postgres casts to the parameter's
    /// declared type.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Literal::Float(x) if x.is_finite() => x.to_string(),
            Literal::Float(_) => "0".to_string(),
            Literal::Ints(v) => Literal::array_text(v),
            Literal::Texts(v) => Literal::array_text(v),
        };
        write!(f, "'{}'", text.replace('\'', "''"))
    }
}

/// A quota's stored period start (`quota_start`, Unix seconds) carries, in multiples of
/// this, how many times an admin reset the count within the period. A lease's units name
/// the value they were counted under (`gateway::counting::give_back` matches it exactly),
/// so units leased before a reset are never given back into the count after it.
pub const QUOTA_RESET_STEP: i64 = 1 << 40;

/// Zeroes the quota period of a key (`'k'`) or user (`'u'`): the count starts again now,
/// the period's boundaries stay (they are computed, not stored), and the stored period
/// start moves on by one [`QUOTA_RESET_STEP`]. False if the subject does not exist.
pub fn reset_quota(pool: &Pool, kind: Subject, id: i64) -> Result<bool> {
    let n = pool.get()?.execute(
        "UPDATE limit_counters SET quota_used = 0,
                quota_start = CASE WHEN quota_start >= 0 THEN quota_start + $3 ELSE -1 END
          WHERE kind = $1 AND owner_id = $2",
        &[&kind.code(), &id, &QUOTA_RESET_STEP],
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
    fn literals_quote_and_escape_whatever_they_hold() {
        assert_eq!(Literal::Ints(vec![]).to_string(), "'{}'");
        assert_eq!(Literal::Ints(vec![3, -1]).to_string(), "'{\"3\",\"-1\"}'");
        assert_eq!(Literal::Float(2.5).to_string(), "'2.5'");
        let hostile = Literal::Texts(vec!["a'b\"c\\d".into(), "{x,y}".into()]);
        assert_eq!(hostile.to_string(), r#"'{"a''b\"c\\d","{x,y}"}'"#);
    }

    #[test]
    fn array_output_is_read_back_and_anything_quoted_is_refused() {
        let ints = |t: &str| parse_array(t, |s| s.parse::<i64>().ok());
        assert_eq!(ints("{}"), Some(vec![]));
        assert_eq!(ints("{1,-2,30}"), Some(vec![1, -2, 30]));
        assert_eq!(ints("{1,x}"), None);
        let names = |t: &str| parse_array(t, |s| Some(s.to_string()));
        assert_eq!(
            names("{burst/1,day/86400}"),
            Some(vec!["burst/1".to_string(), "day/86400".into()])
        );
        assert_eq!(names("{\"a b\"}"), None);
        assert_eq!(names("1,2"), None);
    }
}
