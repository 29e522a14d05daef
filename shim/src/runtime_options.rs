//! The runtime options containerd sends with `CreateTask`: the CRI plugin's
//! `runtimeoptions.v1.Options` (what `[...runtimes.bulkhead.options] ConfigPath = "..."`
//! becomes, and `ctr run --runtime-config-path`), of which the shim reads `config_path`:
//! the configuration file of this RuntimeClass handler, as Kata's shim does.
//!
//! The message is two strings; it is decoded here with the protobuf crate's wire reader
//! rather than generated from containerd's `.proto`.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// containerd's type URL of the message (`github.com/containerd/containerd/pkg/runtimeoptions/v1`).
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The `config_path` of the options, `None` without options, with options of another type
/// (runc's, for instance) or with an empty path. An absolute path is required.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, String> {
    let Some(any) = options else {
        return Ok(None);
    };
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIME_OPTIONS_TYPE {
        log::debug!("runtime options of type {:?} ignored", any.type_url);
        return Ok(None);
    }
    let path = decode_config_path(&any.value)
        .map_err(|e| format!("runtime options ({RUNTIME_OPTIONS_TYPE}): {e}"))?;
    match path {
        None => Ok(None),
        Some(p) if p.is_empty() => Ok(None),
        Some(p) if !p.starts_with('/') => Err(format!(
            "runtime option ConfigPath {p:?} is not an absolute path"
        )),
        Some(p) => Ok(Some(PathBuf::from(p))),
    }
}

/// Field 2 (`config_path`, a string) of the message; other fields are skipped.
fn decode_config_path(bytes: &[u8]) -> Result<Option<String>, String> {
    const CONFIG_PATH: u32 = 2;
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(|e| e.to_string())? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH && wire_type == 2 {
            path = Some(input.read_string().map_err(|e| e.to_string())?);
        } else {
            let wire_type = containerd_shim_protos::protobuf::rt::WireType::new(wire_type)
                .ok_or_else(|| format!("bad wire type {wire_type} of field {field}"))?;
            input.skip_field(wire_type).map_err(|e| e.to_string())?;
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options as containerd encodes them: type_url (1), config_path (2).
    fn options(type_url: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        for (field, text) in [(1u8, type_url), (2, config_path)] {
            value.push(field << 3 | 2);
            value.push(text.len() as u8);
            value.extend_from_slice(text.as_bytes());
        }
        Any {
            type_url: RUNTIME_OPTIONS_TYPE.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn the_config_path_of_runtime_options() {
        let any = options("", "/etc/bulkhead/big-vms.toml");
        assert_eq!(
            config_path(Some(&any)).unwrap(),
            Some(PathBuf::from("/etc/bulkhead/big-vms.toml"))
        );
        assert_eq!(config_path(None).unwrap(), None);
        assert_eq!(config_path(Some(&options("x", ""))).unwrap(), None);
        // The type URL may carry a prefix.
        let mut prefixed = any.clone();
        prefixed.type_url = format!("types.containerd.io/{RUNTIME_OPTIONS_TYPE}");
        assert!(config_path(Some(&prefixed)).unwrap().is_some());
    }

    #[test]
    fn other_options_are_ignored_and_bad_ones_refused() {
        let mut runc = options("", "/x");
        runc.type_url = "containerd.runc.v1.Options".into();
        assert_eq!(config_path(Some(&runc)).unwrap(), None);
        let relative = config_path(Some(&options("", "big.toml"))).unwrap_err();
        assert!(
            relative.contains("\"big.toml\" is not an absolute path"),
            "{relative}"
        );
        let mut truncated = options("", "/etc/bulkhead/x.toml");
        truncated.value.truncate(10);
        assert!(config_path(Some(&truncated)).is_err());
    }
}
