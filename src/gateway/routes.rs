//! The route phase's table: every route in memory by owner, swapped whole when routes
//! change, and matched by longest prefix on path-segment boundaries.

use crate::error::Result;
use crate::http::Ctx;
use crate::store::routes::{self, Route};
use crate::store::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Routes by owner, each owner's list longest prefix first, swapped whole on reload so a
/// request never sees half a change.
#[derive(Default)]
pub struct RouteTable {
    by_user: RwLock<Arc<HashMap<i64, Vec<Arc<Route>>>>>,
    /// Held from read to replace: two reloads at once (an admin change and the sync
    /// thread) must not let the one that read first store last, over the fresher table.
    reloading: Mutex<()>,
}

impl RouteTable {
    /// The owner's route for this host whose prefix is the longest match for `path`; routes
    /// bound to the request's host win over host-less ones.
    pub fn find(&self, user_id: i64, host: Option<&str>, path: &str) -> Option<Arc<Route>> {
        self.snapshot()
            .get(&user_id)?
            .iter()
            .find(|r| {
                r.host.as_deref().is_none_or(|h| Some(h) == host) && prefix_matches(&r.prefix, path)
            })
            .cloned()
    }

    /// For a preflight, which carries no key and so no owner: the routes with a CORS policy,
    /// of any owner, that tie for the best match (host-bound first, then the longest
    /// prefix), lowest id first. A scan of every route; browsers cache preflights.
    pub fn cors_candidates(&self, host: Option<&str>, path: &str) -> Vec<Arc<Route>> {
        let table = self.snapshot();
        let mut matching: Vec<&Arc<Route>> = table
            .values()
            .flatten()
            .filter(|r| {
                r.cors.is_some()
                    && r.host.as_deref().is_none_or(|h| Some(h) == host)
                    && prefix_matches(&r.prefix, path)
            })
            .collect();
        let rank = |r: &Route| (r.host.is_some(), r.prefix.len());
        let Some(best) = matching.iter().map(|r| rank(r)).max() else {
            return Vec::new();
        };
        matching.retain(|r| rank(r) == best);
        matching.sort_by_key(|r| r.id);
        matching.into_iter().cloned().collect()
    }

    /// The current table; the lock is held only to clone the `Arc`, never while matching.
    fn snapshot(&self) -> Arc<HashMap<i64, Vec<Arc<Route>>>> {
        self.by_user
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, routes: Vec<Route>) {
        let mut by_user: HashMap<i64, Vec<Arc<Route>>> = HashMap::new();
        for r in routes {
            by_user.entry(r.user_id).or_default().push(Arc::new(r));
        }
        for list in by_user.values_mut() {
            list.sort_by_key(|r| std::cmp::Reverse((r.host.is_some(), r.prefix.len())));
        }
        *self.by_user.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_user);
    }

    /// Every route, for the health thread.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.snapshot().values().flatten().cloned().collect()
    }

    /// Every route's prefix by id, for the `route` label of `/metrics`.
    pub fn prefixes(&self) -> HashMap<i64, String> {
        self.snapshot()
            .values()
            .flatten()
            .map(|r| (r.id, r.prefix.clone()))
            .collect()
    }

    /// Re-reads every route from the database.
    pub fn reload(&self, pool: &Pool) -> Result<usize> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let routes = routes::load_all(pool)?;
        let n = routes.len();
        self.replace(routes);
        Ok(n)
    }
}

/// `/users` matches `/users`, `/users/` and `/users/7`, never `/usersX`; `/` matches all.
/// Prefixes are stored without a trailing slash (see `operator::admin::routes::normalize_prefix`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The request's `Host`, lower-cased and without its port, as route hosts are stored.
pub fn request_host(ctx: &Ctx) -> Option<String> {
    let h = ctx.header("Host")?.trim();
    let name = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.rsplit_once(':').map_or(h, |(name, _)| name)
    };
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matches_only_on_segment_boundaries() {
        assert!(prefix_matches("/users", "/users"));
        assert!(prefix_matches("/users", "/users/"));
        assert!(prefix_matches("/users", "/users/7"));
        assert!(!prefix_matches("/users", "/usersX"));
        assert!(!prefix_matches("/users", "/user"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api/v2", "/api/v2/x"));
        assert!(!prefix_matches("/api/v2", "/api/v20"));
    }

    #[test]
    fn longest_prefix_wins_and_owners_are_separate() {
        let t = RouteTable::default();
        let r = |id, user_id, prefix: &str, host: Option<&str>| Route {
            id,
            user_id,
            prefix: prefix.into(),
            target_url: "http://u".into(),
            host: host.map(str::to_string),
            ..Route::default()
        };
        t.replace(vec![
            r(1, 1, "/api", None),
            r(2, 1, "/api/v2", None),
            r(3, 2, "/other", None),
            r(4, 1, "/", Some("acme.example.com")),
        ]);
        assert_eq!(t.find(1, None, "/api/v2/x").unwrap().id, 2);
        assert_eq!(t.find(1, None, "/api/v1").unwrap().id, 1);
        assert!(t.find(1, None, "/other").is_none());
        assert_eq!(t.find(2, None, "/other/1").unwrap().id, 3);
        // The tenant's host route wins over host-less ones, and only on that host.
        assert_eq!(
            t.find(1, Some("acme.example.com"), "/api/v2").unwrap().id,
            4
        );
        assert_eq!(t.find(1, Some("other.example.com"), "/api").unwrap().id, 1);
    }

    #[test]
    fn strip_prefix_forwards_the_rest_of_the_path() {
        let r = Route {
            prefix: "/users".into(),
            strip_prefix: true,
            ..Route::default()
        };
        assert_eq!(r.upstream_path("/users/7"), "/7");
        assert_eq!(r.upstream_path("/users"), "/");
        let keep = Route {
            prefix: "/users".into(),
            ..Route::default()
        };
        assert_eq!(keep.upstream_path("/users/7"), "/users/7");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// Route prefixes as `operator::admin::routes::normalize_prefix` stores them: `/` or `/seg(/seg)*`.
        fn prefix() -> impl Strategy<Value = String> {
            prop_oneof![
                1 => Just("/".to_string()),
                6 => prop::collection::vec("[a-c]{1,3}", 1..4).prop_map(|s| format!("/{}", s.join("/"))),
            ]
        }

        /// Request paths that often share a prefix's letters, with or without a boundary.
        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec("[a-c]{0,4}", 0..6).prop_map(|s| format!("/{}", s.join("/")))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// A prefix matches exactly itself and the paths below it on a segment boundary.
            #[test]
            fn prefixes_match_only_on_segment_boundaries(p in prefix(), path in path()) {
                let expected = p == "/"
                    || path == p
                    || path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'));
                prop_assert_eq!(prefix_matches(&p, &path), expected);
                if p != "/" {
                    let beside = format!("{p}x");
                    prop_assert!(!prefix_matches(&p, &beside));
                }
            }

            /// The table picks what a brute-force search picks: the owner's matching routes,
            /// host-bound ones first, then the longest prefix.
            #[test]
            fn the_table_picks_the_longest_matching_prefix_of_the_owner(
                routes in prop::collection::btree_set((0i64..3, prefix(), any::<bool>()), 0..12),
                user in 0i64..3,
                bound_host in any::<bool>(),
                path in path(),
            ) {
                let host = bound_host.then_some("api.test");
                let mut seen = std::collections::HashSet::new();
                let routes: Vec<Route> = routes
                    .into_iter()
                    // (owner, prefix, host) is unique, as the routes table's constraint says.
                    .filter(|(u, p, h)| seen.insert((*u, p.clone(), *h)))
                    .enumerate()
                    .map(|(i, (u, p, h))| Route {
                        id: i as i64,
                        user_id: u,
                        prefix: p,
                        host: h.then(|| "api.test".to_string()),
                        ..Route::default()
                    })
                    .collect();
                let table = RouteTable::default();
                table.replace(routes.clone());
                let best = routes
                    .iter()
                    .filter(|r| r.user_id == user)
                    .filter(|r| r.host.is_none() || r.host.as_deref() == host)
                    .filter(|r| prefix_matches(&r.prefix, &path))
                    .max_by_key(|r| (r.host.is_some(), r.prefix.len()));
                let found = table.find(user, host, &path);
                prop_assert_eq!(found.map(|r| r.id), best.map(|r| r.id));
            }

            /// After normalisation, a matched route's upstream path stays under the route:
            /// stripped or not, it is a path with no `.`/`..` segment, even for an upstream
            /// that decodes `%2F` into a separator.
            #[test]
            fn a_normalised_path_cannot_leave_its_route_upstream(
                p in prefix(),
                raw in prop::collection::vec(
                    prop_oneof!["[a-c]{0,3}", Just("..".to_string()), Just("%2e%2e".to_string()),
                        Just("%2F".to_string()), Just(".".to_string()), Just("".to_string())],
                    0..6,
                ),
                strip in any::<bool>(),
            ) {
                let raw = format!("{p}/{}", raw.join("/"));
                let Ok(path) = crate::http::target::normalize(&raw) else { return Ok(()) };
                if !prefix_matches(&p, &path) {
                    return Ok(());
                }
                let route = Route { prefix: p.clone(), strip_prefix: strip, ..Route::default() };
                let up = route.upstream_path(&path);
                prop_assert!(up.starts_with('/'));
                prop_assert!(!crate::http::target::tests::has_dot_segment(&up), "{}", up);
                if !strip {
                    prop_assert!(prefix_matches(&p, &up));
                }
            }
        }
    }
}
