//! Which limits and quota a request is counted against: the key's own fields, else its
//! plan's (the key's plan, else its user's plan), and the user's own limits and quota
//! counted across all of the user's keys. Plans are cached here and reloaded when any
//! replica changes one (the `plans` notification, `sync.rs`).

use crate::error::Result;
use crate::store::plans::{self, Plan};
use crate::store::Pool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Every plan by id (plans are tiers: few, read on every request, changed rarely).
#[derive(Default)]
pub struct Plans {
    map: RwLock<Arc<HashMap<i64, Arc<Plan>>>>,
}

impl Plans {
    /// Re-reads every plan.
    pub fn reload(&self, pool: &Pool) -> Result<()> {
        let fresh: HashMap<i64, Arc<Plan>> = plans::list(pool)?
            .into_iter()
            .map(|p| (p.id, Arc::new(p)))
            .collect();
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(())
    }

    pub fn get(&self, id: i64) -> Option<Arc<Plan>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }
}
