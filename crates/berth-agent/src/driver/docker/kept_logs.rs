//! Output of finished job runs, kept after their task is forgotten: a per-run container is
//! removed and a warm run's files go with its bookkeeping, but `berth job logs` must still
//! show what a run printed. Each run's `stdout` and `stderr` are kept under
//! `<data_dir>/job-logs/<task id>/`; the newest [`MAX_KEPT_RUNS`] runs are kept.

use super::{LogStream, api_error, of_stream};
use bollard::Docker;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Runs whose output is kept on a node (the oldest go first).
pub const MAX_KEPT_RUNS: usize = 1000;

/// Where a forgotten run's output is kept.
pub fn dir(data_dir: &Path, task_id: &str) -> PathBuf {
    data_dir.join("job-logs").join(task_id)
}

/// Whether `app_id` is a job run's (its output is worth keeping).
pub fn is_job_run(app_id: &str) -> bool {
    berth_core::job::run::job_of_app_id(app_id).is_some()
}

/// Moves a warm run's output files into the kept directory.
pub fn keep_files(data_dir: &Path, task_id: &str, run_dir: &Path) {
    let to = dir(data_dir, task_id);
    if fs::create_dir_all(&to).is_err() {
        return;
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let from = run_dir.join(stream.as_str());
        if fs::rename(&from, to.join(stream.as_str())).is_err() {
            let _ = fs::copy(&from, to.join(stream.as_str()));
        }
    }
    prune(data_dir);
}

/// Copies a per-run container's output (both streams) into the kept directory, before the
/// container is removed.
pub async fn keep_container_logs(docker: &Docker, data_dir: &Path, container: &str, task_id: &str) {
    // Written aside and renamed: a reader never sees half of it as the whole.
    let done = dir(data_dir, task_id);
    let to = PathBuf::from(format!("{}.partial", done.display()));
    if let Err(e) = fs::create_dir_all(&to) {
        tracing::warn!(task_id, error = %e, "cannot keep the run's output");
        return;
    }
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let opts = LogsOptions {
            stdout: stream == LogStream::Stdout,
            stderr: stream == LogStream::Stderr,
            tail: "all".to_string(),
            ..Default::default()
        };
        let Ok(mut file) = fs::File::create(to.join(stream.as_str())) else {
            continue;
        };
        let mut logs = docker.logs(container, Some(opts));
        while let Some(item) = logs.next().await {
            match item {
                Ok(o) => {
                    if let Some(bytes) = of_stream(o, stream)
                        && file.write_all(&bytes).is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    let e = api_error("reading the container's logs", e);
                    tracing::warn!(task_id, error = %e, "cannot keep the run's output");
                    break;
                }
            }
        }
    }
    if let Err(e) = fs::rename(&to, &done) {
        tracing::warn!(task_id, error = %e, "cannot keep the run's output");
        let _ = fs::remove_dir_all(&to);
    }
    prune(data_dir);
}

/// Removes the oldest kept runs beyond [`MAX_KEPT_RUNS`].
fn prune(data_dir: &Path) {
    let Ok(entries) = fs::read_dir(data_dir.join("job-logs")) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, e.path()))
        })
        .collect();
    if dirs.len() <= MAX_KEPT_RUNS {
        return;
    }
    dirs.sort();
    let excess = dirs.len() - MAX_KEPT_RUNS;
    for (_, d) in dirs.into_iter().take(excess) {
        let _ = fs::remove_dir_all(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_files_are_kept_and_the_oldest_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("stdout"), "out\n").unwrap();
        fs::write(run.join("stderr"), "err\n").unwrap();
        keep_files(tmp.path(), "j.run-1.x", &run);
        let kept = dir(tmp.path(), "j.run-1.x");
        assert_eq!(fs::read_to_string(kept.join("stdout")).unwrap(), "out\n");
        assert_eq!(fs::read_to_string(kept.join("stderr")).unwrap(), "err\n");
        for i in 0..MAX_KEPT_RUNS + 5 {
            fs::create_dir_all(dir(tmp.path(), &format!("t{i}"))).unwrap();
        }
        prune(tmp.path());
        let n = fs::read_dir(tmp.path().join("job-logs")).unwrap().count();
        assert_eq!(n, MAX_KEPT_RUNS);
        assert!(is_job_run("job:j") && !is_job_run("/web"));
    }
}
