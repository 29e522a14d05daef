//! The attachment's network namespace, by path: created and removed with
//! [`NetNs::create_named`] / [`NetNs::remove_named`] (a bind mount, as `ip netns add`).

use std::path::Path;

use super::error::CniError;
use crate::network::netns::{NetNs, NetNsError};

fn split(path: &Path) -> Result<(&Path, &str), CniError> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(CniError::Netns(NetNsError::BadName(
            path.display().to_string(),
        ))),
    }
}

/// Creates a new network namespace bound on `path` (its directory is created); fails if
/// `path` exists. Blocking.
pub fn create(path: &Path) -> Result<(), CniError> {
    let (dir, name) = split(path)?;
    NetNs::create_named(dir, name)?;
    Ok(())
}

/// Removes a namespace made by [`create`]; one that is gone is fine. Blocking.
pub fn remove(path: &Path) -> Result<(), CniError> {
    let (dir, name) = split(path)?;
    Ok(NetNs::remove_named(dir, name)?)
}

/// Whether `path` is a network namespace.
pub fn exists(path: &Path) -> bool {
    NetNs::open(path).is_ok()
}
