//! Config as code: `tollgate export` writes the plans, users and routes as one JSON file,
//! `tollgate apply` makes the database match such a file in one transaction
//! (docs/operations.md, "Config as code").
//!
//! Every object is read with the admin API's own readers (`admin::{plans,users,routes}::
//! read_new` after `input::only`), and written as the admin API shows it minus what belongs
//! to one database (ids, timestamps, counts): a field the admin API gains is exported and
//! applied with no change here. Objects are named by what survives a move between
//! databases: a plan by `name`, a user by `email`, a route by its owner's email, `host`
//! and `prefix`; a user names its plan by name (`plan`), a route its owner by email
//! (`owner`). API keys are not in the file: they are secrets, made through the API.

use super::admin::audit::redact;
use super::admin::{plans, routes, users};
use super::input;
use crate::error::{Error, Result};
use crate::store::audit::{self as audit_store, NewAudit};
use crate::store::plans::{Change, Plan, PlanChanges, PlanFields, PolicyChanges};
use crate::store::routes::{Route, RouteRecord};
use crate::store::users::{User, UserChanges};
use crate::store::{self, Pool, Transaction};
use chrono::Utc;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The file format's version; a file says which one it is written in.
pub const VERSION: i64 = 1;

/// What the admin API shows of each object that a file does not carry: ids and timestamps
/// are one database's, the use counts derived, `planId` and `userId` replaced by `plan`
/// and `owner`, and `hasSigningSecret` is about a secret the file never holds.
const PLAN_NOT_IN_FILE: &[&str] = &["id", "keys", "users", "createdAt", "updatedAt"];
const USER_NOT_IN_FILE: &[&str] = &["id", "createdAt", "planId"];
const ROUTE_NOT_IN_FILE: &[&str] = &["id", "userId", "createdAt", "updatedAt", "hasSigningSecret"];

/// The actor of the audit rows `apply` writes.
const ACTOR: &str = "apply";

fn without(v: Value, drop: &[&str]) -> Map<String, Value> {
    let mut m = match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.retain(|k, _| !drop.contains(&k.as_str()));
    m
}

fn plan_entry(p: &Plan) -> Map<String, Value> {
    without(plans::plan_json(p, Default::default()), PLAN_NOT_IN_FILE)
}

fn user_entry(u: &User, plan: Option<&str>) -> Map<String, Value> {
    let mut m = without(users::user_json(u), USER_NOT_IN_FILE);
    m.insert("plan".into(), json!(plan));
    m
}

fn route_entry(r: &RouteRecord, owner: &str) -> Map<String, Value> {
    let mut m = without(routes::route_json(r), ROUTE_NOT_IN_FILE);
    // The admin API shows a pool both ways (`targetUrl`: its first target); a body takes
    // one of them: `targetUrl` for a pool of one at weight 1, else `targets`.
    let one = matches!(r.route.pool().as_slice(), [t] if t.weight == 1);
    m.remove(if one { "targets" } else { "targetUrl" });
    m.insert("owner".into(), json!(owner));
    m
}

/// A route's name in messages and the order of the file: owner, host (empty: any), prefix.
type RouteId = (String, String, String);

fn route_id(owner: &str, r: &Route) -> RouteId {
    (
        owner.to_string(),
        r.host.clone().unwrap_or_default(),
        r.prefix.clone(),
    )
}

fn route_name((owner, host, prefix): &RouteId) -> String {
    format!("{owner} {host}{prefix}")
}

/// Everything a file describes, read from one snapshot.
struct State {
    plans: Vec<Plan>,
    users: Vec<User>,
    routes: Vec<RouteRecord>,
}

impl State {
    fn read(tx: &mut Transaction<'_>) -> Result<State> {
        Ok(State {
            plans: store::plans::list_in(tx)?,
            users: store::users::list_in(tx, 0, None, i64::MAX)?,
            routes: store::routes::list_in(tx, 0, None, i64::MAX)?,
        })
    }

    fn plan_names(&self) -> HashMap<i64, String> {
        self.plans.iter().map(|p| (p.id, p.name.clone())).collect()
    }

    fn emails(&self) -> HashMap<i64, String> {
        self.users.iter().map(|u| (u.id, u.email.clone())).collect()
    }
}

/// The database as a file: every plan, user and route, each list in its identities' order.
pub fn export(pool: &Pool) -> Result<Value> {
    let mut conn = pool.get()?;
    let mut tx = store::snapshot(&mut conn)?;
    let s = State::read(&mut tx)?;
    let (plan_names, emails) = (s.plan_names(), s.emails());
    let mut plans: Vec<_> = s.plans.iter().map(plan_entry).collect();
    plans.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut users: Vec<_> = s
        .users
        .iter()
        .map(|u| {
            let plan = u.policy.plan_id.and_then(|id| plan_names.get(&id));
            (u.email.clone(), user_entry(u, plan.map(String::as_str)))
        })
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));
    let mut routes: Vec<_> = s
        .routes
        .iter()
        .map(|r| {
            let owner = emails.get(&r.route.user_id).cloned().unwrap_or_default();
            (route_id(&owner, &r.route), route_entry(r, &owner))
        })
        .collect();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(json!({
        "version": VERSION,
        "plans": plans,
        "users": users.into_iter().map(|u| u.1).collect::<Vec<_>>(),
        "routes": routes.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    }))
}

struct FilePlan {
    fields: PlanFields,
    entry: Map<String, Value>,
}

struct FileUser {
    spec: users::UserSpec,
    plan: Option<String>,
    entry: Map<String, Value>,
}

struct FileRoute {
    route: Route,
    /// Whether the file sets `signingSecret`; when not, the stored one is kept.
    sets_secret: bool,
    entry: Map<String, Value>,
}

/// A file, read and checked whole before anything is written, in identity order.
pub struct Desired {
    plans: BTreeMap<String, FilePlan>,
    users: BTreeMap<String, FileUser>,
    routes: BTreeMap<RouteId, FileRoute>,
}

/// An error of one object, its message led by `place` (`routes[2] (ada@example.com /api)`)
/// and the field it names.
fn at(place: String, e: Error) -> Error {
    let message = match e {
        Error::InvalidField { field, message } => format!("field {field}: {message}"),
        e => e.to_string(),
    };
    Error::BadRequest(format!("{place}: {message}"))
}

fn section<'a>(file: &'a Map<String, Value>, name: &'static str) -> Result<&'a Vec<Value>> {
    match file.get(name) {
        Some(Value::Array(a)) => Ok(a),
        None => Err(Error::field(
            name,
            "is required (an array; [] when there are none)",
        )),
        Some(_) => Err(Error::field(name, "must be an array of objects")),
    }
}

fn object<'a>(v: &'a Value, place: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::BadRequest(format!("{place}: must be a JSON object")))
}

/// A plan, user or route entry's label for messages: its index and whatever of its
/// identity it has.
fn label(kind: &str, i: usize, name: Option<String>) -> String {
    match name {
        Some(n) => format!("{kind}[{i}] ({n})"),
        None => format!("{kind}[{i}]"),
    }
}

/// Reads and checks a whole file: the format, every field with the admin API's readers,
/// duplicate identities and references to plans and users the file does not hold.
pub fn parse(text: &str) -> Result<Desired> {
    let file = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(Error::BadRequest("the file must be a JSON object".into())),
        Err(e) => return Err(Error::BadRequest(format!("invalid JSON: {e}"))),
    };
    input::only(&file, &["version", "plans", "users", "routes"])?;
    if file.get("version").and_then(Value::as_i64) != Some(VERSION) {
        return Err(Error::field("version", format!("must be {VERSION}")));
    }
    let mut d = Desired {
        plans: BTreeMap::new(),
        users: BTreeMap::new(),
        routes: BTreeMap::new(),
    };
    let now = Utc::now();
    for (i, v) in section(&file, "plans")?.iter().enumerate() {
        let place = label("plans", i, v["name"].as_str().map(str::to_string));
        let body = object(v, &place)?;
        let fields = (|| {
            input::only(body, plans::FIELDS)?;
            plans::read_new(body)
        })()
        .map_err(|e| at(place.clone(), e))?;
        let entry = plan_entry(&Plan {
            id: 0,
            name: fields.name.clone(),
            limits: fields.limits.clone(),
            quota: fields.quota.clone(),
            counting: fields.counting,
            created_at: now,
            updated_at: now,
        });
        if d.plans.contains_key(&fields.name) {
            return Err(at(place, Error::field("name", "is used by another plan")));
        }
        d.plans
            .insert(fields.name.clone(), FilePlan { fields, entry });
    }
    // A user names its plan by name, never by one database's id.
    let user_fields: Vec<&str> = users::FIELDS
        .iter()
        .copied()
        .filter(|f| *f != "planId")
        .chain(["plan"])
        .collect();
    for (i, v) in section(&file, "users")?.iter().enumerate() {
        let place = label("users", i, v["email"].as_str().map(str::to_string));
        let body = object(v, &place)?;
        let (spec, plan) = (|| {
            input::only(body, &user_fields)?;
            let plan = input::string(body, "plan", 200)?;
            if plan.as_ref().is_some_and(|p| !d.plans.contains_key(p)) {
                return Err(Error::field("plan", "names no plan in this file"));
            }
            let mut rest = body.clone();
            rest.remove("plan");
            Ok((users::read_new(&rest)?, plan))
        })()
        .map_err(|e| at(place.clone(), e))?;
        let entry = user_entry(
            &User {
                id: 0,
                email: spec.email.clone(),
                name: spec.name.clone(),
                created_at: now,
                policy: spec.policy.clone(),
                metadata: spec.metadata.clone(),
                external_id: spec.external_id.clone(),
            },
            plan.as_deref(),
        );
        if d.users.contains_key(&spec.email) {
            return Err(at(place, Error::field("email", "is used by another user")));
        }
        if let Some(x) = &spec.external_id {
            if d.users
                .values()
                .any(|u| u.spec.external_id.as_ref() == Some(x))
            {
                return Err(at(
                    place,
                    Error::field("externalId", "is used by another user"),
                ));
            }
        }
        d.users
            .insert(spec.email.clone(), FileUser { spec, plan, entry });
    }
    // A route names its owner by email; `userId` is one database's and refused as unknown.
    let route_fields: Vec<&str> = routes::FIELDS.iter().copied().chain(["owner"]).collect();
    for (i, v) in section(&file, "routes")?.iter().enumerate() {
        let name = match (v["owner"].as_str(), v["prefix"].as_str()) {
            (Some(o), Some(p)) => Some(format!("{o} {}{p}", v["host"].as_str().unwrap_or(""))),
            _ => None,
        };
        let place = label("routes", i, name);
        let body = object(v, &place)?;
        let (owner, route) = (|| {
            input::only(body, &route_fields)?;
            let owner = input::required(input::string(body, "owner", 254)?, "owner")?;
            if !d.users.contains_key(&owner) {
                return Err(Error::field("owner", "names no user in this file"));
            }
            let mut rest = body.clone();
            rest.remove("owner");
            Ok((owner, routes::read_new(&rest)?))
        })()
        .map_err(|e| at(place.clone(), e))?;
        let id = route_id(&owner, &route);
        let entry = route_entry(
            &RouteRecord {
                route: route.clone(),
                created_at: now,
                updated_at: now,
            },
            &owner,
        );
        if d.routes.contains_key(&id) {
            return Err(at(
                place,
                Error::field(
                    "prefix",
                    "another route of this owner has this host and prefix",
                ),
            ));
        }
        let sets_secret = body.contains_key("signingSecret");
        d.routes.insert(
            id,
            FileRoute {
                route,
                sets_secret,
                entry,
            },
        );
    }
    Ok(d)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Created,
    Updated,
    Deleted,
    /// In the database, not in the file, and left there (no `--prune`).
    Kept,
}

/// One line of what `apply` did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Outcome {
    pub verb: Verb,
    pub kind: &'static str,
    pub name: String,
    /// The fields an update changes, or what a deletion takes with it.
    pub detail: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.verb {
            Verb::Created => "created",
            Verb::Updated => "updated",
            Verb::Deleted => "deleted",
            Verb::Kept => "kept",
        };
        write!(f, "{verb} {} {}", self.kind, self.name)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// The fields whose values differ, in name order.
fn changed(current: &Map<String, Value>, desired: &Map<String, Value>) -> Vec<String> {
    let keys: BTreeSet<&String> = current.keys().chain(desired.keys()).collect();
    keys.into_iter()
        .filter(|k| current.get(*k) != desired.get(*k))
        .cloned()
        .collect()
}

fn set<T>(v: Option<T>) -> Change<T> {
    v.map_or(Change::Clear, Change::Set)
}

/// Records a change in the audit log, in the apply's own transaction; the records are
/// the admin API's shapes, redacted the same way.
fn audit(
    tx: &mut Transaction<'_>,
    (kind, id): (&str, i64),
    verb: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<()> {
    let (before, after) = (before.map(redact), after.map(redact));
    let (action, target) = (format!("{kind}.{verb}"), format!("{kind}:{id}"));
    audit_store::insert_in(
        tx,
        &NewAudit {
            actor: ACTOR,
            client_ip: "",
            action: &action,
            target: &target,
            before: before.as_ref(),
            after: after.as_ref(),
        },
    )
}

fn plan_audit(p: &Plan) -> Value {
    Value::Object(without(
        plans::plan_json(p, Default::default()),
        &["keys", "users"],
    ))
}

/// Makes the database match `d` in one transaction and says what changed: plans, users,
/// then routes created or updated, then routes, users and plans not in the file deleted
/// (`prune`) or kept, each kind in identity order. `dry_run` rolls it all back. Running
/// replicas learn of the changes through the triggers' NOTIFY, sent at commit.
pub fn apply(pool: &Pool, d: &Desired, prune: bool, dry_run: bool) -> Result<Vec<Outcome>> {
    let mut conn = pool.get()?;
    let mut tx = store::config_transaction(&mut conn)?;
    let s = State::read(&mut tx)?;
    let mut out = Vec::new();
    let mut note = |verb, kind, name: &str, detail: String| {
        out.push(Outcome {
            verb,
            kind,
            name: name.to_string(),
            detail,
        })
    };

    let mut plan_ids: HashMap<String, i64> =
        s.plans.iter().map(|p| (p.name.clone(), p.id)).collect();
    let stored_plans: HashMap<&str, &Plan> = s.plans.iter().map(|p| (p.name.as_str(), p)).collect();
    for (name, fp) in &d.plans {
        match stored_plans.get(name.as_str()) {
            Some(cur) => {
                let fields = changed(&plan_entry(cur), &fp.entry);
                if fields.is_empty() {
                    continue;
                }
                let change = PlanChanges {
                    name: None,
                    limits: Some(fp.fields.limits.clone()),
                    quota: set(fp.fields.quota.clone()),
                    counting: set(fp.fields.counting),
                };
                let new = store::plans::update_in(&mut tx, cur.id, &change)?
                    .ok_or_else(|| Error::NotFound("plan".into()))?;
                audit(
                    &mut tx,
                    ("plan", cur.id),
                    "update",
                    Some(plan_audit(cur)),
                    Some(plan_audit(&new)),
                )?;
                note(Verb::Updated, "plan", name, fields.join(", "));
            }
            None => {
                let new = store::plans::insert_in(&mut tx, &fp.fields)?;
                plan_ids.insert(name.clone(), new.id);
                audit(
                    &mut tx,
                    ("plan", new.id),
                    "create",
                    None,
                    Some(plan_audit(&new)),
                )?;
                note(Verb::Created, "plan", name, String::new());
            }
        }
    }

    let plan_names = s.plan_names();
    let mut user_ids: HashMap<String, i64> =
        s.users.iter().map(|u| (u.email.clone(), u.id)).collect();
    let stored_users: HashMap<&str, &User> =
        s.users.iter().map(|u| (u.email.as_str(), u)).collect();
    for (email, fu) in &d.users {
        let plan_id = fu.plan.as_ref().and_then(|p| plan_ids.get(p)).copied();
        let mut spec_policy = fu.spec.policy.clone();
        spec_policy.plan_id = plan_id;
        match stored_users.get(email.as_str()) {
            Some(cur) => {
                let cur_plan = cur.policy.plan_id.and_then(|id| plan_names.get(&id));
                let fields = changed(&user_entry(cur, cur_plan.map(String::as_str)), &fu.entry);
                if fields.is_empty() {
                    continue;
                }
                let change = UserChanges {
                    email: None,
                    name: Some(fu.spec.name.clone()),
                    policy: PolicyChanges {
                        plan_id: set(plan_id),
                        limits: set(fu.spec.policy.limits.clone()),
                        quota: set(fu.spec.policy.quota.clone()),
                    },
                    metadata: Some(fu.spec.metadata.clone()),
                    external_id: set(fu.spec.external_id.clone()),
                };
                let new = store::users::update_in(&mut tx, cur.id, &change)?
                    .ok_or_else(|| Error::NotFound("user".into()))?;
                audit(
                    &mut tx,
                    ("user", cur.id),
                    "update",
                    Some(users::user_json(cur)),
                    Some(users::user_json(&new)),
                )?;
                note(Verb::Updated, "user", email, fields.join(", "));
            }
            None => {
                let mut new = fu.spec.as_new();
                new.policy = &spec_policy;
                let new = store::users::insert_in(&mut tx, &new)?;
                user_ids.insert(email.clone(), new.id);
                let after = Some(users::user_json(&new));
                audit(&mut tx, ("user", new.id), "create", None, after)?;
                note(Verb::Created, "user", email, String::new());
            }
        }
    }

    let emails = s.emails();
    let stored: BTreeMap<RouteId, &RouteRecord> = s
        .routes
        .iter()
        .map(|r| {
            let owner = emails.get(&r.route.user_id).cloned().unwrap_or_default();
            (route_id(&owner, &r.route), r)
        })
        .collect();
    for (id, fr) in &d.routes {
        let name = route_name(id);
        let mut route = fr.route.clone();
        route.user_id = user_ids[&id.0];
        match stored.get(id) {
            Some(cur) => {
                let mut fields = changed(&route_entry(cur, &id.0), &fr.entry);
                route.id = cur.route.id;
                if !fr.sets_secret {
                    route.signing_secret = cur.route.signing_secret.clone();
                } else if route.signing_secret != cur.route.signing_secret {
                    fields.push("signingSecret".into());
                }
                if fields.is_empty() {
                    continue;
                }
                let new = store::routes::update_in(&mut tx, cur.route.id, |r| {
                    *r = route;
                    Ok(())
                })?
                .ok_or_else(|| Error::NotFound("route".into()))?;
                audit(
                    &mut tx,
                    ("route", cur.route.id),
                    "update",
                    Some(routes::route_json(cur)),
                    Some(routes::route_json(&new)),
                )?;
                note(Verb::Updated, "route", &name, fields.join(", "));
            }
            None => {
                let new = store::routes::insert_in(&mut tx, route)?;
                let after = Some(routes::route_json(&new));
                audit(&mut tx, ("route", new.route.id), "create", None, after)?;
                note(Verb::Created, "route", &name, String::new());
            }
        }
    }

    let not_in_file = if prune {
        "not in the file"
    } else {
        "not in the file; --prune deletes it"
    };
    // What the file does not hold, in the order deleting it needs: routes, users, plans.
    let mut extras: Vec<(&str, String, i64, Value)> = stored
        .iter()
        .filter(|(id, _)| !d.routes.contains_key(*id))
        .map(|(id, r)| ("route", route_name(id), r.route.id, routes::route_json(r)))
        .collect();
    let extra_users: BTreeMap<&str, &User> = s
        .users
        .iter()
        .filter(|u| !d.users.contains_key(&u.email))
        .map(|u| (u.email.as_str(), u))
        .collect();
    extras.extend(
        extra_users
            .into_iter()
            .map(|(email, u)| ("user", email.to_string(), u.id, users::user_json(u))),
    );
    let extra_plans: BTreeMap<&str, &Plan> = s
        .plans
        .iter()
        .filter(|p| !d.plans.contains_key(&p.name))
        .map(|p| (p.name.as_str(), p))
        .collect();
    extras.extend(
        extra_plans
            .into_iter()
            .map(|(name, p)| ("plan", name.to_string(), p.id, plan_audit(p))),
    );
    let key_counts: HashMap<i64, i64> = store::keys::counts_by_user_in(&mut tx)?
        .into_iter()
        .collect();
    for (kind, name, id, before) in extras {
        if !prune {
            note(Verb::Kept, kind, &name, not_in_file.into());
            continue;
        }
        let mut detail = not_in_file.to_string();
        match kind {
            "route" => store::routes::delete_in(&mut tx, id)?,
            "user" => {
                // Its keys go with it, as `DELETE /admin/users/:id` takes them.
                let keys = key_counts.get(&id).copied().unwrap_or(0);
                detail = format!("{not_in_file}; with its {keys} API key(s)");
                store::users::delete_in(&mut tx, id)?
            }
            // A key still on it (keys are not in the file) makes the whole apply fail.
            _ => store::plans::delete_in(&mut tx, id).map_err(|e| at(format!("plan {name}"), e))?,
        };
        audit(&mut tx, (kind, id), "delete", Some(before), None)?;
        note(Verb::Deleted, kind, &name, detail);
    }

    if dry_run {
        tx.rollback()?;
    } else {
        tx.commit()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(routes: Value) -> String {
        json!({
            "version": 1,
            "plans": [{"name": "pro", "limits": [], "quota": null}],
            "users": [{"email": "ada@example.com", "name": "Ada", "plan": "pro"}],
            "routes": routes,
        })
        .to_string()
    }

    fn refusal(text: &str) -> String {
        match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn every_route_field_the_admin_api_shows_is_one_a_file_sets() {
        let shown = routes::route_json(&RouteRecord {
            route: Route::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        });
        for k in shown.as_object().unwrap().keys() {
            assert!(
                ROUTE_NOT_IN_FILE.contains(&k.as_str()) || routes::FIELDS.contains(&k.as_str()),
                "the admin API shows {k}, which a route body does not take: \
                 export would write a file apply refuses"
            );
        }
    }

    #[test]
    fn an_entry_read_back_from_its_own_rendering_is_the_same() {
        // The least a route can say, and most of what it can: what export writes of
        // either must read back as the same route (a route field whose shown form the
        // admin reader refuses would make every exported file unappliable).
        for route in [
            json!({"owner": "ada@example.com", "prefix": "/", "targetUrl": "http://h"}),
            json!({
                "owner": "ada@example.com", "prefix": "/api/", "targetUrl": "http://h:1",
                "host": "Acme.Example.com", "methods": ["get"], "timeoutMs": 500,
                "connectTimeoutMs": 100, "readTimeoutMs": 200, "maxBodyBytes": 1024,
                "stripPrefix": true, "preserveHost": true, "breakerOn5xx": true,
                "identityHeaders": true, "allowCidrs": ["10.0.0.0/8"],
                "denyCidrs": ["10.1.0.0/16"],
                "cors": {"allowedOrigins": ["https://app.test"], "maxAgeSecs": 5}
            }),
            json!({
                "owner": "ada@example.com", "prefix": "/pool",
                "targets": [{"url": "http://h:1", "weight": 2}, {"url": "http://h:2"}],
                "balance": "hash", "retries": 0,
                "healthCheck": {"path": "/health", "intervalMs": 1000}
            }),
        ] {
            let d = parse(&file(json!([route]))).unwrap();
            let r = d.routes.values().next().unwrap();
            let again = parse(&file(json!([Value::Object(r.entry.clone())]))).unwrap();
            assert_eq!(again.routes.values().next().unwrap().route, r.route);
            assert!(!r.sets_secret);
        }
        let d = parse(&file(
            json!([{"owner": "ada@example.com", "prefix": "/api/",
                                     "host": "Acme.Example.com", "targetUrl": "http://h"}]),
        ))
        .unwrap();
        let id = d.routes.keys().next().unwrap();
        assert_eq!(route_name(id), "ada@example.com acme.example.com/api");
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_object_and_the_field() {
        let route = |extra: Value| {
            let mut r =
                json!({"owner": "ada@example.com", "prefix": "/a", "targetUrl": "http://h"});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            file(json!([r]))
        };
        for (text, expect) in [
            (route(json!({"stripprefix": true})), "routes[0] (ada@example.com /a): field stripprefix"),
            (route(json!({"timeoutMs": 0})), "routes[0] (ada@example.com /a): field timeoutMs"),
            (route(json!({"userId": 1})), "field userId: unknown field"),
            (route(json!({"owner": "bob@example.com"})), "field owner: names no user"),
            (file(json!([{"owner": "ada@example.com", "targetUrl": "http://h"}])), "routes[0]: field prefix: is required"),
            (
                file(json!([{"owner": "ada@example.com", "prefix": "/a", "targetUrl": "http://h"},
                            {"owner": "ada@example.com", "prefix": "/a/", "targetUrl": "http://g"}])),
                "routes[1] (ada@example.com /a/): field prefix",
            ),
            (r#"{"version": 1, "plans": [], "users": []}"#.into(), "routes: is required"),
            (r#"{"version": 2, "plans": [], "users": [], "routes": []}"#.into(), "version"),
            (
                r#"{"version": 1, "plans": [], "users": [{"email": "a@b.co", "name": "A", "plan": "gold"}], "routes": []}"#.into(),
                "users[0] (a@b.co): field plan: names no plan",
            ),
            (
                r#"{"version": 1, "plans": [], "users": [{"email": "a@b.co", "name": "A", "planId": 1}], "routes": []}"#.into(),
                "users[0] (a@b.co): field planId: unknown field",
            ),
            (
                r#"{"version": 1, "plans": [{"name": "p", "quota": {"limit": 0, "period": "day"}}], "users": [], "routes": []}"#.into(),
                "plans[0] (p): field quota",
            ),
            (r#"{"version": 1, "plans": [], "users": [], "routes": [], "keys": []}"#.into(), "keys: unknown field"),
        ] {
            let got = refusal(&text);
            assert!(got.contains(expect), "{text}\n  got: {got}\n  want: {expect}");
        }
    }
}
