//! Putting a rendered file in place: only when its bytes changed, atomically (a reader sees
//! the old file or the new one, never half of one), checked by a command with the old file
//! put back when the check fails.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What happened to a destination file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The rendered bytes are what the file holds already: nothing written.
    Unchanged,
    /// The new content is in place (and passed the check).
    Written,
}

fn temp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    dest.with_file_name(format!(".{name}.berth-template.tmp"))
}

/// Writes `content` to `dest` through a temporary file in the same directory, fsynced and
/// renamed over it, keeping the old file's mode (0644 for a new file).
pub fn write_atomic(dest: &Path, content: &[u8]) -> std::io::Result<()> {
    let mode = std::fs::metadata(dest)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let tmp = temp_path(dest);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Runs `command` with `sh -c`; `Err` carries its exit status and the end of its output.
pub async fn run_command(command: &str, dest: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BERTH_TEMPLATE_DEST", dest)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    let text = text.trim();
    let tail: String = text
        .char_indices()
        .rev()
        .nth(1000)
        .map(|(i, _)| text[i..].to_string())
        .unwrap_or_else(|| text.to_string());
    Err(format!("`{command}` failed ({}): {tail}", out.status))
}

/// Puts `content` at `dest` when it differs from what is there. With `check`, the command
/// runs with the new file in place; if it fails, the old file (or no file) is put back and
/// the error says why.
pub async fn apply(dest: &Path, content: &[u8], check: Option<&str>) -> Result<Outcome, String> {
    let old = match std::fs::read(dest) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("reading {}: {e}", dest.display())),
    };
    if old.as_deref() == Some(content) {
        return Ok(Outcome::Unchanged);
    }
    write_atomic(dest, content).map_err(|e| format!("writing {}: {e}", dest.display()))?;
    let Some(check) = check else {
        return Ok(Outcome::Written);
    };
    if let Err(why) = run_command(check, dest).await {
        let restored = match &old {
            Some(o) => write_atomic(dest, o),
            None => std::fs::remove_file(dest),
        };
        let kept = match restored {
            Ok(()) => "the previous file is back in place".to_string(),
            Err(e) => format!("putting the previous file back failed too: {e}"),
        };
        return Err(format!(
            "the check refused the new {}; {kept}: {why}",
            dest.display()
        ));
    }
    Ok(Outcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_changed_content_is_written_and_a_failed_check_restores_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("upstreams.conf");
        assert_eq!(apply(&dest, b"a\n", None).await, Ok(Outcome::Written));
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let before = std::fs::metadata(&dest)
            .expect("meta")
            .modified()
            .expect("mtime");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(apply(&dest, b"a\n", None).await, Ok(Outcome::Unchanged));
        assert_eq!(
            std::fs::metadata(&dest)
                .expect("meta")
                .modified()
                .expect("mtime"),
            before,
            "unchanged content is not rewritten"
        );
        let e = apply(&dest, b"b\n", Some("grep -q a \"$BERTH_TEMPLATE_DEST\""))
            .await
            .expect_err("the check fails");
        assert!(e.contains("previous file is back"), "{e}");
        assert_eq!(std::fs::read(&dest).expect("read"), b"a\n");
        assert_eq!(
            apply(&dest, b"ab\n", Some("grep -q a \"$BERTH_TEMPLATE_DEST\"")).await,
            Ok(Outcome::Written)
        );
        assert_eq!(std::fs::read(&dest).expect("read"), b"ab\n");
        let mode = std::fs::metadata(&dest).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "the mode is kept");
        // A new file the check refuses is removed again.
        let fresh = dir.path().join("new.conf");
        assert!(apply(&fresh, b"x", Some("false")).await.is_err());
        assert!(!fresh.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no temp files left"
        );
    }
}
