//! `run --network bridge|none|host` and `-p`: the container's network namespace made with
//! the CNI plugins (`bulkhead_sandbox::network::cni`), its `/etc/hosts` and
//! `/etc/resolv.conf`, and the release of all of it.
//!
//! The [`Attachment`] (everything CNI DEL needs) is written to the container's state
//! before any plugin runs and removed only once DEL succeeded, so the supervisor's
//! teardown, `rm` after a crash, and `rm -f` all release the address, the port rules and
//! the namespace.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_sandbox::network::cni::{Attachment, PortMapping};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::state::{ContainerDir, Isolation, State};

/// `--network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A namespace on the default bridge network: its own address, NAT out, `-p` in.
    #[default]
    Bridge,
    /// A namespace with only loopback.
    None,
    /// The host's network (container isolation only).
    Host,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        })
    }
}

impl From<crate::config::NetworkMode> for NetworkMode {
    fn from(m: crate::config::NetworkMode) -> Self {
        use crate::config::NetworkMode as C;
        match m {
            C::Bridge => NetworkMode::Bridge,
            C::None => NetworkMode::None,
            C::Host => NetworkMode::Host,
        }
    }
}

/// The usage errors of `--network` and `-p` for an isolation mode.
pub fn check_usage(
    mode: NetworkMode,
    isolation: Isolation,
    ports: &[PortMapping],
) -> Result<(), String> {
    if mode == NetworkMode::Host && isolation == Isolation::Vm {
        return Err(
            "--network host cannot share the host's network with a microVM, which has \
                    its own kernel: use the default bridge network and -p to publish ports, \
                    or --isolation container"
                .into(),
        );
    }
    if !ports.is_empty() && mode != NetworkMode::Bridge {
        return Err(format!(
            "-p publishes ports of the bridge network; it cannot be used with --network {mode}"
        ));
    }
    bulkhead_sandbox::network::cni::ports::check_conflicts(ports).map_err(|e| e.to_string())
}

/// Where a container's network namespace is bound.
pub fn netns_path(cfg: &Config, id: &str) -> PathBuf {
    cfg.run_root.join("netns").join(id)
}

/// What the network set-up gives the spec.
pub struct Prepared {
    /// The namespace the container joins (container isolation); `None`: the host's
    /// network (or, in a VM, the guest's).
    pub netns: Option<PathBuf>,
    pub attachment: Option<Attachment>,
}

/// Makes the container's network: the namespace and CNI ADD for `bridge` (both
/// isolations) and `none` (container isolation: loopback only). Records the attachment
/// in the state first.
pub async fn setup(cfg: &Config, dir: &ContainerDir, state: &State) -> anyhow::Result<Prepared> {
    let rc = &state.config;
    let networks = match (rc.network, state.isolation) {
        (NetworkMode::Bridge, _) => vec![cfg
            .bridge_conflist()
            .context("the bridge network's configuration")?],
        (NetworkMode::None, Isolation::Container) => vec![],
        (NetworkMode::None, Isolation::Vm) | (NetworkMode::Host, _) => {
            return Ok(Prepared {
                netns: None,
                attachment: None,
            })
        }
    };
    let path = netns_path(cfg, &state.id);
    let mut att = Attachment::new(&state.id, &path, networks, rc.publish.clone());
    dir.update(|s| s.network = Some(att.clone()))?;
    let cni = cfg.cni();
    let att = tokio::task::spawn_blocking(move || cni.attach(&mut att).map(|()| att))
        .await
        .context("setting up the network")?;
    let att = match att {
        Ok(a) => a,
        Err(e) => {
            // attach undid itself.
            let _ = dir.update(|s| s.network = None);
            return Err(e).context(format!("setting up the {} network", rc.network));
        }
    };
    dir.update(|s| s.network = Some(att.clone()))?;
    Ok(Prepared {
        netns: Some(path),
        attachment: Some(att),
    })
}

/// Releases what [`setup`] made (CNI DEL in reverse order, the namespace) and forgets it
/// in the state. Blocking; fine to call when there is nothing to release.
pub fn release(cfg: &Config, dir: &ContainerDir) -> anyhow::Result<()> {
    let Ok(state) = dir.read() else {
        return Ok(());
    };
    release_state(cfg, &state)?;
    if dir.path.exists() {
        dir.update(|s| s.network = None)?;
    }
    Ok(())
}

/// CNI DEL of the attachment recorded in `state`, if any.
pub fn release_state(cfg: &Config, state: &State) -> anyhow::Result<()> {
    if let Some(att) = &state.network {
        cfg.cni()
            .detach(att)
            .with_context(|| format!("releasing the network of {}", state.id))?;
    }
    Ok(())
}

/// The container's `/etc/hosts` and `/etc/resolv.conf` on a bridge network, written to
/// `dir`: its own name with its address, and the host's resolvers minus loopback ones
/// (unreachable from the bridge), as Docker does. Returns (host file, container path).
pub fn write_etc_files(
    dir: &Path,
    hostname: &str,
    att: &Attachment,
) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ip = att.endpoint().map(|e| e.ip_address);
    let hosts = hosts_file(hostname, ip.as_deref());
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("resolv.conf", resolv_conf(&host_resolv), "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (name, text, at) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        out.push((p, PathBuf::from(at)));
    }
    Ok(out)
}

fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The host's resolv.conf without loopback nameservers.
fn resolv_conf(host: &str) -> String {
    host.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(ip)) => !ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()),
                _ => true,
            }
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `ps`'s PORTS: `127.0.0.1:18080->80/tcp, 0.0.0.0:8443->443/tcp`.
pub fn ports_column(ports: &[PortMapping]) -> String {
    let all: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    all.join(", ")
}

/// `inspect`'s `network_settings`.
pub fn settings_json(state: &State) -> serde_json::Value {
    let ep = state.network.as_ref().and_then(|a| a.endpoint());
    let ports: Vec<String> = state.config.publish.iter().map(|p| p.to_string()).collect();
    serde_json::json!({
        "mode": state.config.network.to_string(),
        "network": state.network.as_ref().and_then(|a| a.network_name()),
        "netns": state.network.as_ref().map(|a| a.netns.display().to_string()),
        "ip_address": ep.as_ref().map(|e| e.ip_address.clone()).unwrap_or_default(),
        "ip_prefix_len": ep.as_ref().map(|e| e.prefix_len),
        "gateway": ep.as_ref().map(|e| e.gateway.clone()).unwrap_or_default(),
        "mac_address": ep.as_ref().map(|e| e.mac_address.clone()).unwrap_or_default(),
        "ports": ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage() {
        let p: Vec<PortMapping> = vec!["8080:80".parse().unwrap()];
        assert!(check_usage(NetworkMode::Bridge, Isolation::Vm, &p).is_ok());
        let e = check_usage(NetworkMode::Host, Isolation::Vm, &[]).unwrap_err();
        assert!(e.contains("--network host") && e.contains("-p"), "{e}");
        assert!(check_usage(NetworkMode::Host, Isolation::Container, &[]).is_ok());
        let e = check_usage(NetworkMode::None, Isolation::Container, &p).unwrap_err();
        assert!(e.contains("--network none"), "{e}");
        let twice = [p[0].clone(), p[0].clone()];
        assert!(check_usage(NetworkMode::Bridge, Isolation::Container, &twice).is_err());
    }

    #[test]
    fn etc_files() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 198.18.0.53\nnameserver ::1\nsearch example.test\noptions edns0\n";
        assert_eq!(
            resolv_conf(host),
            "# comment\nnameserver 198.18.0.53\nsearch example.test\noptions edns0\n"
        );
        let h = hosts_file("web", Some("10.89.0.5"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.89.0.5\tweb\n"));
        assert!(!hosts_file("web", None).contains("web"));
    }

    #[test]
    fn ports_as_docker_shows_them() {
        let p: Vec<PortMapping> = vec![
            "127.0.0.1:18080:80".parse().unwrap(),
            "53:53/udp".parse().unwrap(),
        ];
        assert_eq!(
            ports_column(&p),
            "127.0.0.1:18080->80/tcp, 0.0.0.0:53->53/udp"
        );
        assert_eq!(ports_column(&[]), "");
    }
}
