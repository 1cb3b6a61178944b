//! The registry's private runtime directory (sockets), and the clean-up of
//! those that registries killed without a shutdown left behind.
//!
//! odo never changes a directory it was handed: it creates its own
//! `odo-<pid>-<random>` directory (mode 0700) inside the given one (or the
//! system's temporary directory), writes a marker file in it, and removes
//! only that directory at shutdown. The clean-up removes a directory only
//! when odo provably made it: named so, holding the marker with the same
//! pid, both owned by this user, and that pid no longer runs.

use std::path::{Path, PathBuf};

use crate::RegistryError;

/// The marker file inside every runtime directory odo creates; it holds
/// the creating process's pid.
pub(crate) const MARKER: &str = ".odo-runtime";

/// A runtime directory this process created. Removed by
/// [`RuntimeDir::remove`], never implicitly.
#[derive(Debug)]
pub(crate) struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates a fresh private directory inside `parent` (the system's
    /// temporary directory if `None`; `parent` is created if missing, with
    /// mode 0700, and left as it is otherwise), after removing the stale
    /// ones there.
    pub(crate) fn create(parent: Option<&Path>) -> Result<Self, RegistryError> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let err = |path: &Path, source: std::io::Error| RegistryError::RuntimeDir {
            path: path.to_path_buf(),
            source,
        };
        if !parent.is_dir() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&parent).map_err(|e| err(&parent, e))?;
        }
        remove_stale(&parent);
        let pid = std::process::id();
        let mut attempts = 0;
        let path = loop {
            let path = parent.join(format!("odo-{pid}-{}", &crate::config::random_token()[..8]));
            let mut builder = std::fs::DirBuilder::new();
            // Not recursive: a directory already there is not ours.
            builder.recursive(false);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            match builder.create(&path) {
                Ok(()) => break path,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(err(&path, e)),
            }
        };
        let dir = RuntimeDir { path };
        let marked = (|| {
            // Ours, just made: its mode may be set, whatever the umask did.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
            }
            std::fs::write(dir.path.join(MARKER), format!("{pid}\n"))
        })();
        if let Err(e) = marked {
            dir.remove();
            return Err(err(&dir.path, e));
        }
        Ok(dir)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and what is in it.
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the runtime directory");
        }
    }
}

/// How often [`keep_marker`] looks.
const MARKER_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the marker of the runtime directory at `path` again whenever a
/// cleaner of temporary files removed it (the servers there make their
/// sockets, and so the directory, again: odo-transport), so that a later
/// odo can still tell the directory is odo's and clean it up after a
/// crash. Runs until aborted. See [`restore_marker`].
pub(crate) async fn keep_marker(path: PathBuf) {
    let mut ticks = tokio::time::interval(MARKER_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match restore_marker(&path) {
            Ok(true) => {
                tracing::warn!(dir = %path.display(), "the runtime directory's marker was removed: written again")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(dir = %path.display(), error = %e, "cannot write the runtime directory's marker")
            }
        }
    }
}

/// Writes the marker in `dir` if it is missing and `dir` is still this
/// user's private directory: a real directory (not a link), ours, that no
/// one else may enter (as odo-transport makes it again). Anything else is
/// left alone: in a shared parent (`/tmp`) someone else may have taken the
/// name after a cleaner removed it. The marker is created, never opened:
/// no link in its place is followed, and no file is truncated. Whether it
/// wrote the marker.
pub(crate) fn restore_marker(dir: &Path) -> std::io::Result<bool> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_dir() {
        return Ok(false);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != rustix::process::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
            return Ok(false);
        }
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(MARKER));
    match created {
        Ok(mut file) => {
            use std::io::Write as _;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the runtime directories in `parent` that registries killed
/// without a shutdown left behind: see the [module](self) documentation.
/// Whether a pid runs is read from `/proc`, so this does nothing outside
/// Linux.
pub(crate) fn remove_stale(parent: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("odo-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !made_by_odo(&path, pid) || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(dir = %path.display(), pid, "removing a dead registry's runtime directory");
        if let Err(e) = std::fs::remove_dir_all(&path) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a dead registry's runtime directory");
        }
    }
}

/// Whether `dir` is a runtime directory process `pid` of this user made:
/// a real directory (not a link) owned by us, holding odo's marker, a
/// regular file owned by us that names `pid`.
fn made_by_odo(dir: &Path, pid: u32) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let us = rustix::process::geteuid().as_raw();
        let ours = |path: &Path, dir: bool| {
            std::fs::symlink_metadata(path).is_ok_and(|m| {
                m.uid() == us
                    && if dir {
                        m.file_type().is_dir()
                    } else {
                        m.file_type().is_file()
                    }
            })
        };
        let marker = dir.join(MARKER);
        ours(dir, true) && ours(&marker, false) && marker_pid(&marker) == Some(pid)
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, pid);
        false
    }
}

/// The pid a marker file names (it is read only up to a few bytes).
#[cfg(unix)]
fn marker_pid(marker: &Path) -> Option<u32> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(marker)
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn private(dir: &Path) {
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_missing_marker_is_written_again_in_our_private_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("odo-1-abc");
        private(&dir);
        assert!(restore_marker(&dir).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join(MARKER)).unwrap(),
            format!("{}\n", std::process::id())
        );
        // There already: left as it is.
        std::fs::write(dir.join(MARKER), "7\n").unwrap();
        assert!(!restore_marker(&dir).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join(MARKER)).unwrap(), "7\n");
        // Gone: nothing to do.
        assert!(!restore_marker(&root.path().join("gone")).unwrap());
    }

    /// Someone took the name in a shared parent after a cleaner removed
    /// the directory: a link in the marker's place is not followed (its
    /// target is neither made nor truncated), and a directory others may
    /// enter, or a link in the directory's place, gets no marker.
    #[test]
    fn a_marker_is_never_written_through_a_link_nor_into_a_directory_not_ours_alone() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("victim");
        std::fs::write(&target, "precious").unwrap();
        let dangling = root.path().join("made-by-a-link");

        let dir = root.path().join("odo-1-link");
        private(&dir);
        std::os::unix::fs::symlink(&target, dir.join(MARKER)).unwrap();
        assert!(!restore_marker(&dir).unwrap());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

        let dir = root.path().join("odo-1-dangling");
        private(&dir);
        std::os::unix::fs::symlink(&dangling, dir.join(MARKER)).unwrap();
        assert!(!restore_marker(&dir).unwrap());
        assert!(!dangling.exists(), "a link's target was made");

        let open = root.path().join("odo-1-open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!restore_marker(&open).unwrap());
        assert!(!open.join(MARKER).exists());

        let linked = root.path().join("odo-1-linked");
        let elsewhere = root.path().join("elsewhere");
        private(&elsewhere);
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(!restore_marker(&linked).unwrap());
        assert!(!elsewhere.join(MARKER).exists());
    }
}
