//! Unix socket files: a private directory, a private socket, stale sockets
//! replaced only when nothing listens, a socket made again when its file
//! was removed under a running server, and removal at shutdown.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::endpoint::Endpoint;
use crate::server::BindError;

/// The socket file a server created; removed when dropped if it is still
/// the same file.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Whether the file at its path is still the socket this server made
    /// (a cleaner of temporary files may have removed it, or the whole
    /// directory).
    pub(crate) fn in_place(&self) -> bool {
        matches!(
            fs::symlink_metadata(&self.path),
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino
        )
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), error = %e, "cannot remove socket file");
                } else {
                    debug!(path = %self.path.display(), "removed socket file");
                }
            }
            // Gone already, or replaced by someone else's: leave it.
            _ => {}
        }
    }
}

/// Binds a listener at `path` inside a private directory.
pub(crate) async fn bind(
    endpoint: &Endpoint,
    path: &Path,
) -> Result<(UnixListener, SocketFile), BindError> {
    let io_error = |source: io::Error| BindError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    ensure_private_dir(dir)?;
    remove_stale_socket(endpoint, path).await?;
    let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => BindError::AddrInUse {
            endpoint: endpoint.clone(),
        },
        _ => io_error(source),
    })?;
    let meta = fs::symlink_metadata(path).map_err(io_error)?;
    // Remove the file if anything below fails.
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error)?;
    Ok((listener, file))
}

/// Creates `dir` with mode 0700 if it is missing; refuses one that others
/// can enter or that another user owns.
fn ensure_private_dir(dir: &Path) -> Result<(), BindError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BindError::CreateDir {
                    dir: dir.to_owned(),
                    source,
                })?;
            info!(dir = %dir.display(), "created socket directory (mode 0700)");
            fs::metadata(dir).map_err(|source| BindError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?
        }
        Err(source) => {
            return Err(BindError::CreateDir {
                dir: dir.to_owned(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(BindError::NotADirectory {
            dir: dir.to_owned(),
        });
    }
    let us = rustix::process::geteuid().as_raw();
    if meta.uid() != us {
        return Err(BindError::DirectoryOwner {
            dir: dir.to_owned(),
            owner: meta.uid(),
            us,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(BindError::DirectoryNotPrivate {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Removes a socket file left by a dead server; refuses if a server answers
/// on it or the path is not a socket.
async fn remove_stale_socket(endpoint: &Endpoint, path: &Path) -> Result<(), BindError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                endpoint: endpoint.clone(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket {
            path: path.to_owned(),
        });
    }
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => Err(BindError::AddrInUse {
            endpoint: endpoint.clone(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing stale socket file (nothing listens on it)");
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(BindError::Io {
                    endpoint: endpoint.clone(),
                    source,
                }),
            }
        }
        // Vanished in between: bind will tell.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BindError::Io {
            endpoint: endpoint.clone(),
            source,
        }),
    }
}
