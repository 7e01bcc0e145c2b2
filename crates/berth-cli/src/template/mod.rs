//! `berth template`: what consul-template does for load balancers, over Berth's catalog.
//! Templates (minijinja) read services; each service a template reads is watched with a
//! blocking query, so a change is rendered within milliseconds, and only a change: output
//! identical to the file is never written, nor reloaded. A new file goes in atomically, an
//! optional check (`nginx -t`) runs with it in place and puts the old file back when it
//! fails, and reloads that fail are retried with backoff. docs/templates.md has the details.

mod output;
mod render;

use crate::Ctx;
use crate::client::{Client, encode};
use crate::error::CliError;
use output::Outcome;
use render::{Dep, Snapshot, Source};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, clap::Args)]
pub struct TemplateArgs {
    /// A template and the file it renders to, with an optional command to run after that
    /// file changed: `SRC:DEST[:COMMAND]` (repeat for several).
    #[arg(long = "template", required = true, value_name = "SRC:DEST[:COMMAND]")]
    pub templates: Vec<String>,
    /// Runs with each new file in place before it is kept (e.g. `nginx -t`); when it fails,
    /// the previous file is put back and nothing is reloaded. `$BERTH_TEMPLATE_DEST` names
    /// the file.
    #[arg(long, value_name = "COMMAND")]
    pub check: Option<String>,
    /// Runs once after any file changed (e.g. `nginx -s reload`); retried with backoff
    /// while it fails.
    #[arg(long, value_name = "COMMAND")]
    pub reload: Option<String>,
    /// Quiescence: after a change, wait MIN for more changes before rendering, but never
    /// longer than MAX after the first one (`ms`, `s` or `m`).
    #[arg(long, value_name = "MIN:MAX", default_value = "50ms:1s")]
    pub wait: String,
    /// Render once, check, write and reload if changed, then exit (non-zero on an error).
    #[arg(long)]
    pub once: bool,
}

/// One `--template`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    source: PathBuf,
    dest: PathBuf,
    command: Option<String>,
}

fn parse_spec(s: &str) -> Result<Spec, CliError> {
    let mut parts = s.splitn(3, ':');
    let (Some(source), Some(dest)) = (parts.next(), parts.next()) else {
        return Err(CliError::Input(format!(
            "--template {s:?}: expected SRC:DEST[:COMMAND]"
        )));
    };
    if source.is_empty() || dest.is_empty() {
        return Err(CliError::Input(format!(
            "--template {s:?}: expected SRC:DEST[:COMMAND]"
        )));
    }
    Ok(Spec {
        source: source.into(),
        dest: dest.into(),
        command: parts
            .next()
            .filter(|c| !c.trim().is_empty())
            .map(str::to_string),
    })
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..=3600.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

fn parse_wait(s: &str) -> Result<(Duration, Duration), CliError> {
    let bad = || CliError::Input(format!("--wait {s:?}: expected MIN:MAX, e.g. 50ms:1s"));
    let (min, max) = s.split_once(':').ok_or_else(bad)?;
    let (min, max) = (
        parse_duration(min).ok_or_else(bad)?,
        parse_duration(max).ok_or_else(bad)?,
    );
    if min > max {
        return Err(CliError::Input(format!(
            "--wait {s:?}: MIN is longer than MAX"
        )));
    }
    Ok((min, max))
}

/// How long a watch blocks on the server (below the client's request timeout).
const WATCH_WAIT: &str = "20s";
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Renders before giving up on finding every dependency (each round fetches the new ones).
const MAX_DISCOVERY_ROUNDS: usize = 8;

fn index_of(body: &Value) -> u64 {
    body["index"].as_u64().unwrap_or(0)
}

fn service_path(name: &str, index: u64, blocking: bool) -> String {
    let mut p = format!("/api/v1/services/{}", encode(name, false));
    if blocking {
        p.push_str(&format!("?index={index}&wait={WATCH_WAIT}"));
    }
    p
}

fn list_path(index: u64, blocking: bool) -> String {
    if blocking {
        format!("/api/v1/services?index={index}&wait={WATCH_WAIT}")
    } else {
        "/api/v1/services".to_string()
    }
}

/// The current value of `dep` (`None`: no such service) and its index.
async fn fetch(
    client: &Client,
    dep: &Dep,
    index: u64,
    blocking: bool,
) -> Result<(u64, Option<Value>), CliError> {
    match dep {
        Dep::List => {
            let body = client.get(&list_path(index, blocking)).await?;
            Ok((index_of(&body), Some(body["services"].clone())))
        }
        Dep::Service(name) => match client.get(&service_path(name, index, blocking)).await {
            Ok(body) => Ok((index_of(&body), Some(body["service"].clone()))),
            Err(e) if e.status() == Some(404) => Ok((0, None)),
            Err(e) => Err(e),
        },
    }
}

/// Keeps `dep` in the snapshot current with blocking queries, signalling `changed` when
/// its value changes. A service that does not exist is looked at again whenever the service
/// list changes. Errors are retried with backoff, forever.
async fn watch(
    client: Client,
    dep: Dep,
    snapshot: Arc<Mutex<Snapshot>>,
    changed: mpsc::UnboundedSender<()>,
) {
    let mut index = 0;
    let mut list_index = 0;
    let mut backoff = RETRY_MIN;
    loop {
        let result = match fetch(&client, &dep, index, true).await {
            Ok((_, None)) => match fetch(&client, &Dep::List, list_index, true).await {
                Ok((i, _)) => {
                    list_index = i;
                    // Look at the service again now, without blocking.
                    fetch(&client, &dep, 0, false).await
                }
                Err(e) => Err(e),
            },
            other => other,
        };
        match result {
            Ok((i, value)) => {
                backoff = RETRY_MIN;
                index = i;
                let mut snap = match snapshot.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if snap.get(&dep) != Some(&value) {
                    snap.insert(dep.clone(), value);
                    if changed.send(()).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                eprintln!("berth template: watching {dep:?}: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

fn read_sources(specs: &[Spec]) -> Result<Vec<Source>, CliError> {
    specs
        .iter()
        .map(|s| {
            std::fs::read_to_string(&s.source)
                .map(|text| Source {
                    name: s.source.display().to_string(),
                    text,
                })
                .map_err(|e| CliError::io(format!("reading template {}", s.source.display()), e))
        })
        .collect()
}

/// Renders every template, fetching what they read until the snapshot holds all of it.
async fn render_all(
    client: &Client,
    sources: &[Source],
    snapshot: &Arc<Mutex<Snapshot>>,
) -> Result<(Vec<String>, BTreeSet<Dep>), String> {
    for _ in 0..MAX_DISCOVERY_ROUNDS {
        let snap = match snapshot.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut outputs = Vec::with_capacity(sources.len());
        let mut deps = BTreeSet::new();
        for s in sources {
            let r = render::render(s, &snap)?;
            outputs.push(r.output);
            deps.extend(r.deps);
        }
        let missing: Vec<Dep> = deps
            .iter()
            .filter(|d| !snap.contains_key(*d))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok((outputs, deps));
        }
        for dep in missing {
            let (_, value) = fetch(client, &dep, 0, false)
                .await
                .map_err(|e| format!("reading the catalog: {e}"))?;
            if let Ok(mut s) = snapshot.lock() {
                s.insert(dep, value);
            }
        }
    }
    Err("the templates ask for different services on every render; giving up".into())
}

/// Puts changed outputs in place. Returns the commands now owed (each changed template's
/// own, then `--reload` once when any file changed) and the errors.
async fn apply_all(
    specs: &[Spec],
    outputs: &[String],
    check: Option<&str>,
    reload: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let mut commands = Vec::new();
    let mut errors = Vec::new();
    let mut written = false;
    for (spec, out) in specs.iter().zip(outputs) {
        match output::apply(&spec.dest, out.as_bytes(), check).await {
            Ok(Outcome::Unchanged) => {}
            Ok(Outcome::Written) => {
                eprintln!(
                    "berth template: wrote {} ({} bytes)",
                    spec.dest.display(),
                    out.len()
                );
                written = true;
                commands.extend(spec.command.clone());
            }
            Err(e) => errors.push(e),
        }
    }
    if written {
        commands.extend(reload.map(str::to_string));
    }
    (commands, errors)
}

async fn run_commands(commands: &[String]) -> Result<(), String> {
    for c in commands {
        output::run_command(c, std::path::Path::new("")).await?;
        eprintln!("berth template: ran `{c}`");
    }
    Ok(())
}

pub(crate) async fn run(ctx: &mut Ctx<'_>, args: TemplateArgs) -> Result<(), CliError> {
    let specs: Vec<Spec> = args
        .templates
        .iter()
        .map(|s| parse_spec(s))
        .collect::<Result<_, _>>()?;
    let (min_wait, max_wait) = parse_wait(&args.wait)?;
    let sources = read_sources(&specs)?;
    let client = ctx.client.clone();
    let snapshot: Arc<Mutex<Snapshot>> = Arc::default();
    let (changed_tx, mut changed) = mpsc::unbounded_channel();
    let mut watched: BTreeSet<Dep> = BTreeSet::new();
    // Commands still owed after a failed run, and when to try them again.
    let mut owed: Vec<String> = Vec::new();
    let mut retry_at: Option<(Instant, Duration)> = None;
    loop {
        match render_all(&client, &sources, &snapshot).await {
            Err(e) if args.once => return Err(CliError::Failed(format!("berth template: {e}"))),
            Err(e) => eprintln!("berth template: {e}; the files are left as they are"),
            Ok((outputs, deps)) => {
                for dep in deps.difference(&watched).cloned().collect::<Vec<_>>() {
                    if !args.once {
                        tokio::spawn(watch(
                            client.clone(),
                            dep.clone(),
                            snapshot.clone(),
                            changed_tx.clone(),
                        ));
                    }
                    watched.insert(dep);
                }
                let (commands, errors) = apply_all(
                    &specs,
                    &outputs,
                    args.check.as_deref(),
                    args.reload.as_deref(),
                )
                .await;
                for c in commands {
                    if !owed.contains(&c) {
                        owed.push(c);
                    }
                }
                if !errors.is_empty() {
                    let msg = errors.join("; ");
                    if args.once {
                        return Err(CliError::Failed(format!("berth template: {msg}")));
                    }
                    eprintln!("berth template: {msg}");
                }
            }
        }
        if !owed.is_empty() {
            match run_commands(&owed).await {
                Ok(()) => {
                    owed.clear();
                    retry_at = None;
                }
                Err(e) if args.once => {
                    return Err(CliError::Failed(format!("berth template: {e}")));
                }
                Err(e) => {
                    let backoff = retry_at
                        .map(|(_, b)| (b * 2).min(RETRY_MAX))
                        .unwrap_or(RETRY_MIN);
                    eprintln!("berth template: {e}; retrying in {backoff:?}");
                    retry_at = Some((Instant::now() + backoff, backoff));
                }
            }
        }
        if args.once {
            return ctx.line("berth template: done");
        }
        // Wait for a change (or the time to retry a failed command).
        let retry = async {
            match retry_at {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            got = changed.recv() => {
                if got.is_none() {
                    return Ok(());
                }
                quiesce(&mut changed, min_wait, max_wait).await;
            }
            _ = retry => {}
        }
    }
}

/// After a first change: waits until `min` passes without another one, or `max` since the
/// first, so a burst of changes is rendered once.
async fn quiesce(changed: &mut mpsc::UnboundedReceiver<()>, min: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    loop {
        let until = (Instant::now() + min).min(deadline);
        match tokio::time::timeout_at(until, changed.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_and_waits_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_spec("a.j2:/etc/nginx/up.conf:nginx -s reload -g 'a:b'").expect("spec"),
            Spec {
                source: "a.j2".into(),
                dest: "/etc/nginx/up.conf".into(),
                command: Some("nginx -s reload -g 'a:b'".into()),
            }
        );
        assert_eq!(parse_spec("a:b").expect("spec").command, None);
        assert!(parse_spec("a").is_err());
        assert!(parse_spec(":b").is_err());
        assert_eq!(
            parse_wait("50ms:1s").expect("wait"),
            (Duration::from_millis(50), Duration::from_secs(1))
        );
        assert_eq!(
            parse_wait("0s:2m").expect("wait"),
            (Duration::ZERO, Duration::from_secs(120))
        );
        for bad in ["1s", "2s:1s", "1x:2s", "1:2", "-1s:2s"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_coalesced_until_quiet_or_max() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Changes every 30 ms with MIN 50 ms: quiescence ends at MAX (200 ms).
        let sender = tokio::spawn(async move {
            for _ in 0..20 {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let start = Instant::now();
        quiesce(
            &mut rx,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(260),
            "{waited:?}"
        );
        sender.abort();
        // Nothing more comes: it ends after MIN.
        let (_tx, mut rx) = mpsc::unbounded_channel::<()>();
        let start = Instant::now();
        quiesce(
            &mut rx,
            Duration::from_millis(50),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }
}
