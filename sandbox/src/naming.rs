//! Names of sandboxes on the host: the run directory's name (and the id the agent sees)
//! from a pod's or container's id, kept short enough for the unix sockets inside the run
//! directory. `sun_path` holds 108 bytes with the terminating NUL, and CRI's sandbox ids
//! alone are 64 characters; [`sandbox_name`] is the one rule the CLI and the shim use, and
//! [`crate::run_dir::RunDir::create`] refuses a directory whose sockets would not fit.

/// Longest path a unix socket can be bound at (`sun_path` is 108 bytes, NUL included).
pub const UNIX_SOCKET_PATH_MAX: usize = 107;

/// Longest id used as it is for a sandbox's name.
pub const SANDBOX_NAME_MAX: usize = 32;

/// Characters of a long id kept in front of its hash.
const HEAD_LEN: usize = 15;

/// The name of the sandbox of `id` (its run directory and the sandbox id the agent sees):
/// `id` itself when it has at most [`SANDBOX_NAME_MAX`] bytes, otherwise its first 15
/// characters, `-` and 16 hex digits of its FNV-1a hash (32 in all). Distinct ids give
/// distinct names (up to hash collisions), the same id always the same name.
pub fn sandbox_name(id: &str) -> String {
    if id.len() <= SANDBOX_NAME_MAX {
        return id.to_owned();
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Characters, not bytes: a head never ends inside a multi-byte character.
    let head: String = id.chars().take(HEAD_LEN).collect();
    format!("{head}-{hash:016x}")
}

/// Whether a unix socket can be bound at a path of `len` bytes.
pub fn fits_socket_path(len: usize) -> bool {
    len <= UNIX_SOCKET_PATH_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_long_ids_get_short_distinct_names() {
        assert_eq!(sandbox_name("pod1"), "pod1");
        let exactly = "a".repeat(SANDBOX_NAME_MAX);
        assert_eq!(sandbox_name(&exactly), exactly);
        let cri = "1b5b8bb3c5e939714b1eeb8ab27a0e0de24125ca0c04663b26e0809caea0b87a";
        let other = "1b5b8bb3c5e939714b1eeb8ab27a0e0de24125ca0c04663b26e0809caea0b87b";
        assert_eq!(sandbox_name(cri).len(), SANDBOX_NAME_MAX);
        assert!(sandbox_name(cri).starts_with("1b5b8bb3c5e9397-"));
        assert_ne!(sandbox_name(cri), sandbox_name(other));
        assert_eq!(sandbox_name(cri), sandbox_name(cri));
        // The shim's names from before this module: run directories of running pods keep
        // their names across an upgrade.
        assert_eq!(sandbox_name(cri), "1b5b8bb3c5e9397-66fd46042ca26434");
        // Not ASCII (not a valid id, but never a panic).
        let wide = "é".repeat(40);
        assert_eq!(sandbox_name(&wide).chars().count(), HEAD_LEN + 17);
    }

    #[test]
    fn socket_path_limit() {
        assert!(fits_socket_path(107));
        assert!(!fits_socket_path(108));
    }
}
