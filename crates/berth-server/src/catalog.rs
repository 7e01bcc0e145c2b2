//! The service catalog: every app as a service (see [`berth_core::service`]), read from the
//! live state, and the blocking-query protocol Consul clients speak over it.
//!
//! Indexes: every distinct query (a service's instances, the service list, ...) has an
//! index that moves only when that query's result changes, so a watcher never re-renders for
//! nothing. A result is identified by its hash; the first time a query is answered with a new
//! hash, it gets the next number of one counter. The counter starts at the server's start
//! time in ms, so indexes keep growing across restarts and are always >= 1.

use crate::state::Cluster;
use crate::{ApiError, ApiResult, Inner};
use berth_core::service::{Instance, Service, service_name, valid_service_name};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Consul's default blocking wait, and its cap.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Blocking queries held open at once; one more is refused with 429.
pub const MAX_BLOCKING: usize = 20_000;
/// Queries whose index is remembered; past this the memory is dropped and indexes are
/// handed out anew (a watcher then sees one spurious change, never a missed one).
const MAX_TRACKED: usize = 100_000;

/// Service name -> the apps it is made of (sorted), valid for one generation of the app set.
pub type NameMap = BTreeMap<String, Vec<String>>;

/// The app set a name map was built from: `(apps_generation, all_apps_revision)`.
type AppSetKey = (u64, u64);

/// The catalog's memory: which app set the name map was built from, each query's index,
/// and the signal that the state changed.
pub struct Catalog {
    changed: watch::Sender<u64>,
    names: Mutex<Option<(AppSetKey, Arc<NameMap>)>>,
    indexes: Mutex<Indexes>,
    /// Blocking queries waiting now.
    blocking: AtomicUsize,
}

struct Indexes {
    next: u64,
    by_query: HashMap<String, (u64, u64)>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    pub fn new() -> Self {
        let base = (berth_core::time::now_millis().max(1)) as u64;
        Self {
            changed: watch::channel(0).0,
            names: Mutex::new(None),
            indexes: Mutex::new(Indexes {
                next: base,
                by_query: HashMap::new(),
            }),
            blocking: AtomicUsize::new(0),
        }
    }

    /// Wakes blocking queries: something visible changed (the state's revision).
    pub fn notify(&self, revision: u64) {
        self.changed.send_replace(revision);
    }

    /// The index of `query` whose result now hashes to `hash`.
    pub fn index_of(&self, query: &str, hash: u64) -> u64 {
        let mut ix = self.indexes.lock();
        if let Some((h, index)) = ix.by_query.get(query)
            && *h == hash
        {
            return *index;
        }
        if ix.by_query.len() >= MAX_TRACKED {
            ix.by_query.clear();
        }
        ix.next += 1;
        let index = ix.next;
        ix.by_query.insert(query.to_string(), (hash, index));
        index
    }

    /// The service name -> apps map of the current app set (rebuilt when apps were added,
    /// changed or removed).
    pub fn names(&self, st: &Cluster) -> Arc<NameMap> {
        let key = (st.apps_generation, st.all_apps_revision);
        let mut slot = self.names.lock();
        if let Some((k, map)) = slot.as_ref()
            && *k == key
        {
            return map.clone();
        }
        let mut map = NameMap::new();
        for id in st.apps.keys() {
            if let Some(name) = service_name(id) {
                map.entry(name).or_default().push(id.clone());
            }
        }
        let map = Arc::new(map);
        *slot = Some((key, map.clone()));
        map
    }
}

/// The service `name` as the state shows it now; `None` when no app maps to it.
pub fn service(st: &Cluster, names: &NameMap, name: &str) -> Option<Service> {
    if !valid_service_name(name) {
        return None;
    }
    let apps = names.get(name)?;
    let mut s = Service {
        name: name.to_string(),
        ..Default::default()
    };
    for app_id in apps {
        let Some(app) = st.apps.get(app_id) else {
            continue;
        };
        s.add_app(app);
        for task_id in st.tasks_by_app.get(app_id).into_iter().flatten() {
            let Some(task) = st.tasks.get(task_id) else {
                continue;
            };
            let address = st.nodes.get(&task.node_id).map(|n| n.info.address.as_str());
            if let Some(i) = Instance::of(app, task, address) {
                s.instances.push(i);
            }
        }
    }
    s.sort();
    Some(s)
}

/// Every service, by name.
pub fn services(st: &Cluster, names: &NameMap) -> Vec<Service> {
    names.keys().filter_map(|n| service(st, names, n)).collect()
}

/// The service `name` now (DNS and other in-process readers).
pub fn lookup(inner: &Inner, name: &str) -> Option<Service> {
    let st = inner.state.read();
    let names = inner.catalog.names(&st);
    service(&st, &names, name)
}

/// A blocking query's parameters: `index` (answer once the result's index differs from
/// it) and `wait` (the longest to hold the answer back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Blocking {
    pub index: Option<u64>,
    pub wait: Option<Duration>,
}

impl Blocking {
    /// Reads the `index` and `wait` query parameters (Consul's forms: `wait=5m`, `10s`,
    /// `60000ms`; a bare number is seconds). `index=0` does not block.
    pub fn parse(index: Option<&str>, wait: Option<&str>) -> ApiResult<Blocking> {
        let index = match index.map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter 'index': {s:?} is not a number (use the index of an \
                     earlier answer)"
                ))
            })?),
        };
        let wait = match wait.map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(
                parse_wait(s)
                    .map_err(|e| ApiError::BadRequest(format!("query parameter 'wait': {e}")))?,
            ),
        };
        Ok(Blocking {
            index: index.filter(|i| *i > 0),
            wait,
        })
    }
}

/// A duration in Consul's blocking-wait forms, capped at [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (use e.g. 30s, 5m or 60000ms)");
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "us" | "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs.min(MAX_WAIT.as_secs_f64())))
}

fn hash_of<T: Hash>(v: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Releases a blocking slot when the query ends, however it ends.
struct BlockingSlot<'a>(&'a AtomicUsize);

impl Drop for BlockingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers `query` (its identity: the endpoint and the parameters that shape the result)
/// with `compute`'s result and its index. With a [`Blocking`] index equal to the current
/// one, holds the answer until the result changes or the wait (plus up to 1/16 jitter, as
/// Consul does) ends. A client index that is not the current one answers at once: a newer
/// result, or an index from another server or an earlier run.
pub async fn answer<T, F>(
    inner: &Inner,
    query: &str,
    blocking: Blocking,
    compute: F,
) -> ApiResult<(u64, T)>
where
    T: Hash,
    F: Fn(&Cluster, &NameMap) -> T,
{
    let current = |inner: &Inner| {
        let st = inner.state.read();
        let names = inner.catalog.names(&st);
        let result = compute(&st, &names);
        let index = inner.catalog.index_of(query, hash_of(&result));
        (index, result)
    };
    let mut changes = inner.catalog.changed.subscribe();
    let (index, result) = current(inner);
    let Some(wanted) = blocking.index else {
        return Ok((index, result));
    };
    if wanted != index {
        return Ok((index, result));
    }
    if inner.catalog.blocking.fetch_add(1, Ordering::Relaxed) >= MAX_BLOCKING {
        inner.catalog.blocking.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::TooManyRequests(format!(
            "{MAX_BLOCKING} blocking queries are waiting already: retry later, or without index"
        )));
    }
    let _slot = BlockingSlot(&inner.catalog.blocking);
    let wait = blocking.wait.unwrap_or(DEFAULT_WAIT);
    let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
    let deadline = tokio::time::Instant::now() + wait + jitter;
    loop {
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {
                changes.mark_unchanged();
                let (index, result) = current(inner);
                if index != wanted {
                    return Ok((index, result));
                }
            }
            // The wait ended (or the server is going away): the unchanged result.
            Ok(Err(_)) | Err(_) => return Ok(current(inner)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_in_consul_forms() {
        assert_eq!(parse_wait("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_wait("60000ms"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_wait("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_wait("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_wait("1h"), Ok(MAX_WAIT), "capped");
        assert!(parse_wait("soon").is_err());
        assert!(parse_wait("5x").is_err());
        assert!(parse_wait("").is_err());
        assert_eq!(
            Blocking::parse(Some("12"), Some("2s")).ok(),
            Some(Blocking {
                index: Some(12),
                wait: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            Blocking::parse(Some("0"), None).ok(),
            Some(Blocking::default()),
            "index=0 does not block"
        );
        assert!(Blocking::parse(Some("-1"), None).is_err());
        assert!(Blocking::parse(None, Some("forever")).is_err());
    }

    #[test]
    fn an_index_moves_only_when_the_result_changes() {
        let c = Catalog::new();
        let a = c.index_of("svc/web", 1);
        assert!(a >= 1);
        assert_eq!(c.index_of("svc/web", 1), a, "same result, same index");
        let b = c.index_of("svc/web", 2);
        assert!(b > a, "a new result, a higher index");
        assert_eq!(c.index_of("svc/web", 2), b);
        let other = c.index_of("svc/api", 1);
        assert_ne!(other, b, "each query has its own index");
        assert_eq!(c.index_of("svc/web", 2), b, "other queries do not move it");
    }
}
