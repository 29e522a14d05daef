//! Running the plugins of a conflist as the CNI spec (1.0, 0.4) says: each plugin binary
//! found in the plugin directories, `CNI_*` in its environment, its network configuration
//! on stdin (the list's `name` and `cniVersion`, the previous plugin's result as
//! `prevResult`, `runtimeConfig` for the capabilities it declares), its result or error on
//! stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};

use super::conflist::ConfList;
use super::error::{CniError, PluginError};
use super::ports::PortMapping;

/// ADD, DEL or CHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Check,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Check => "CHECK",
        }
    }
}

/// What identifies one attachment to the plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeArgs<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `runtimeConfig.portMappings`, for plugins with that capability.
    pub port_mappings: &'a [PortMapping],
}

/// Finds and runs CNI plugins.
#[derive(Debug, Clone)]
pub struct Plugins {
    dirs: Vec<PathBuf>,
}

impl Plugins {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Plugins { dirs }
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: self.cni_path(),
            })
    }

    fn cni_path(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(":")
    }

    /// The stdin of one plugin: its configuration with the list's name and version,
    /// `prevResult`, and `runtimeConfig` for the capabilities it declares.
    pub fn netconf(
        list: &ConfList,
        plugin: &Map<String, Value>,
        prev: Option<&Value>,
        rt: &RuntimeArgs,
    ) -> Value {
        let mut conf = plugin.clone();
        conf.insert("cniVersion".into(), list.cni_version.clone().into());
        conf.insert("name".into(), list.name.clone().into());
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let wants_ports = plugin
            .get("capabilities")
            .and_then(|c| c.get("portMappings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        conf.remove("runtimeConfig");
        if wants_ports && !rt.port_mappings.is_empty() {
            let ports = serde_json::to_value(rt.port_mappings).unwrap_or_default();
            conf.insert(
                "runtimeConfig".into(),
                serde_json::json!({ "portMappings": ports }),
            );
        }
        Value::Object(conf)
    }

    /// Runs one plugin; returns its stdout.
    fn exec(
        &self,
        op: Op,
        plugin: &str,
        conf: &Value,
        rt: &RuntimeArgs,
    ) -> Result<Vec<u8>, CniError> {
        let path = self.find(plugin)?;
        let spawn_err = |source| CniError::Spawn {
            path: path.clone(),
            source,
        };
        let mut child = Command::new(&path)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", op.as_str())
            .env("CNI_CONTAINERID", rt.container_id)
            .env("CNI_NETNS", rt.netns)
            .env("CNI_IFNAME", rt.ifname)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        let input = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that fails early may close stdin; its status says why.
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let mut error: PluginError = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if error.msg.is_empty() {
            error.msg = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        Err(CniError::Plugin {
            plugin: plugin.to_owned(),
            command: op.as_str(),
            status: out.status.to_string(),
            error,
        })
    }

    /// ADD through the chain; returns the last plugin's result (raw JSON).
    pub fn add(&self, list: &ConfList, rt: &RuntimeArgs) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let kind = plugin_type(plugin);
            let conf = Self::netconf(list, plugin, prev.as_ref(), rt);
            let out = self.exec(Op::Add, kind, &conf, rt)?;
            let result: Value =
                serde_json::from_slice(&out).map_err(|source| CniError::BadResult {
                    plugin: kind.to_owned(),
                    command: "ADD",
                    output: String::from_utf8_lossy(&out).into_owned(),
                    source,
                })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the chain in reverse order, each plugin given the ADD result. Every
    /// plugin runs even if one fails; the first failure is returned. DEL of what is gone
    /// succeeds (the plugins are idempotent, and so is this).
    pub fn del(
        &self,
        list: &ConfList,
        rt: &RuntimeArgs,
        added: Option<&Value>,
    ) -> Result<(), CniError> {
        let mut first = None;
        for plugin in list.plugins.iter().rev() {
            let kind = plugin_type(plugin);
            let conf = Self::netconf(list, plugin, added, rt);
            if let Err(e) = self.exec(Op::Del, kind, &conf, rt) {
                log::warn!("{}", bulkhead_log::error_chain(&e));
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK through the chain, each plugin given the ADD result.
    pub fn check(&self, list: &ConfList, rt: &RuntimeArgs, added: &Value) -> Result<(), CniError> {
        if list.disable_check {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = Self::netconf(list, plugin, Some(added), rt);
            self.exec(Op::Check, plugin_type(plugin), &conf, rt)?;
        }
        Ok(())
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt<'a>(ports: &'a [PortMapping]) -> RuntimeArgs<'a> {
        RuntimeArgs {
            container_id: "c1",
            netns: Path::new("/run/x"),
            ifname: "eth0",
            port_mappings: ports,
        }
    }

    #[test]
    fn netconf_chains_and_capabilities() {
        let list = ConfList::parse(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"bridge","bridge":"b0","runtimeConfig":{"x":1}},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            "t",
        )
        .unwrap();
        let ports = ["127.0.0.1:8080:80".parse::<PortMapping>().unwrap()];
        let c = Plugins::netconf(&list, &list.plugins[0], None, &rt(&ports));
        assert_eq!(
            c,
            serde_json::json!({"type":"bridge","bridge":"b0","cniVersion":"1.0.0","name":"n"})
        );
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let c = Plugins::netconf(&list, &list.plugins[1], Some(&prev), &rt(&ports));
        assert_eq!(c["prevResult"], prev);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostIP"], "127.0.0.1");
        let c = Plugins::netconf(&list, &list.plugins[1], None, &rt(&[]));
        assert!(c.get("runtimeConfig").is_none());
    }

    /// A fake plugin: a shell script that prints a CNI error.
    #[test]
    fn errors_name_the_plugin_status_and_message() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("failing");
        std::fs::write(
            &script,
            "#!/bin/sh\ncat >/dev/null\necho \"{\\\"code\\\":11,\\\"msg\\\":\\\"no luck $CNI_COMMAND\\\",\\\"details\\\":\\\"$CNI_IFNAME\\\"}\"\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let list = ConfList::parse(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"failing"}]}"#,
            "t",
        )
        .unwrap();
        let plugins = Plugins::new(vec!["/nonexistent".into(), dir.path().into()]);
        let e = plugins.add(&list, &rt(&[])).unwrap_err().to_string();
        assert_eq!(
            e,
            "CNI plugin failing (ADD) failed with exit status: 1: no luck ADD: eth0"
        );
        let e = plugins.del(&list, &rt(&[]), None).unwrap_err().to_string();
        assert!(e.contains("(DEL)") && e.contains("no luck DEL"), "{e}");
        let none = Plugins::new(vec![dir.path().join("x")]);
        let e = none.add(&list, &rt(&[])).unwrap_err().to_string();
        assert!(e.contains("\"failing\" not found in"), "{e}");
    }
}
