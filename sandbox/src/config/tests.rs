use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bulkhead_log::error_chain;

use super::*;

const DOCUMENTED: &str = include_str!("../../../config/bulkhead.toml");

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `section.key` of every key in a table, with its value.
fn keys(table: &toml::Table, prefix: &str, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let name = format!("{prefix}{k}");
        match v {
            toml::Value::Table(t) => {
                out.insert(name.clone(), toml::Value::Table(Default::default()));
                keys(t, &format!("{name}."), out)
            }
            v => {
                out.insert(name, v.clone());
            }
        }
    }
}

/// The comment lines directly above each `key = value` of the documented file.
fn documented_comments() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let (mut section, mut comment) = (String::new(), String::new());
    for line in DOCUMENTED.lines().map(str::trim) {
        if let Some(c) = line.strip_prefix('#') {
            comment.push_str(c);
            comment.push('\n');
        } else if line.starts_with('[') {
            section = format!("{}.", line.trim_matches(|c| c == '[' || c == ']'));
            comment.clear();
        } else if let Some((k, _)) = line.split_once('=') {
            out.insert(
                format!("{section}{}", k.trim()),
                std::mem::take(&mut comment),
            );
        } else {
            comment.clear();
        }
    }
    out
}

#[test]
fn the_documented_file_is_the_default() {
    assert_eq!(
        Config::parse(DOCUMENTED, "config/bulkhead.toml").unwrap(),
        Config::default()
    );
}

#[test]
fn the_documented_file_names_every_key_and_its_variable() {
    let mut schema = BTreeMap::new();
    keys(
        &toml::Table::try_from(Config::default()).unwrap(),
        "",
        &mut schema,
    );
    let mut documented = BTreeMap::new();
    keys(&toml::from_str(DOCUMENTED).unwrap(), "", &mut documented);
    assert_eq!(
        schema.keys().collect::<Vec<_>>(),
        documented.keys().collect::<Vec<_>>()
    );
    let comments = documented_comments();
    for (key, _) in schema.iter().filter(|(_, v)| !v.is_table()) {
        let comment = &comments[key];
        assert!(!comment.trim().is_empty(), "{key} has no comment");
        let vars: Vec<&str> = ENV_OVERRIDES
            .iter()
            .filter(|o| o.key == key)
            .map(|o| o.var)
            .collect();
        let named: Vec<&str> = comment
            .split("env: ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert_eq!(named, vars, "{key}: the variables named in its comment");
    }
    for o in ENV_OVERRIDES {
        assert!(
            schema.contains_key(o.key),
            "{} sets unknown key {}",
            o.var,
            o.key
        );
    }
}

#[test]
fn the_default_size_is_the_sizing_rule_for_a_pod_without_limits() {
    let cfg = Config::default();
    for host_cpus in [1, 2, 64] {
        let unlimited = PodResources::default();
        assert_eq!(
            cfg.vm_size(&unlimited, host_cpus),
            VmSize::for_pod(&unlimited, host_cpus)
        );
    }
}

#[test]
fn limits_use_the_rule_and_missing_ones_the_configured_size() {
    let cfg = Config::parse("[vm]\nvcpus = 4\nmemory_mib = 1024\n", "t").unwrap();
    let none = PodResources::default();
    assert_eq!(
        cfg.vm_size(&none, 8),
        VmSize {
            vcpus: 4,
            memory_mib: 1024
        }
    );
    // Never more vCPUs than the host has.
    assert_eq!(cfg.vm_size(&none, 2).vcpus, 2);
    let limited = PodResources {
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
    };
    assert_eq!(
        cfg.vm_size(&limited, 8),
        VmSize {
            vcpus: 2,
            memory_mib: 128 + 64
        }
    );
}

#[test]
fn unknown_keys_name_the_key_and_the_file() {
    for (t, line, key) in [
        ("no_such_key = 1", 1, "no_such_key"),
        ("log_level = \"warn\"\n[vm]\nvcpu = 2", 3, "vm.vcpu"),
        (
            "[virtiofsd]\nbinary = \"auto\"\ncahce = \"never\"",
            3,
            "virtiofsd.cahce",
        ),
        ("[container]\nisolation = \"vm\"", 1, "container"),
        // The shim's old schema is refused with the new names offered.
        ("kernel = \"/k\"", 1, "kernel"),
    ] {
        let e = Config::parse(t, "/etc/bulkhead/config.toml").unwrap_err();
        let m = error_chain(&e);
        assert!(
            matches!(e, ConfigError::Parse { line: Some(l), .. } if l == line),
            "{t}: {m}"
        );
        assert!(m.starts_with("/etc/bulkhead/config.toml, line "), "{m}");
        assert!(m.contains(key), "{t}: {m}");
        assert!(m.contains("unknown field"), "{t}: {m}");
    }
}

#[test]
fn an_unknown_key_reads_well() {
    let e = Config::parse(
        "[vm]\nkernel = \"/k\"\nvcpu = 2\n",
        "/etc/bulkhead/config.toml",
    );
    assert_eq!(
        error_chain(&e.unwrap_err()),
        "/etc/bulkhead/config.toml, line 3: vm.vcpu: unknown field `vcpu`, expected one of \
         `kernel`, `initrd`, `vmm`, `cmdline`, `vcpus`, `memory_mib`, `boot_timeout_secs`, \
         `request_timeout_secs`, `vmm_log_level`, `net_backend`, `console_max_bytes`"
    );
}

#[test]
fn bad_values_name_the_key_and_the_file() {
    for (t, key) in [
        ("log_level = \"loud\"", "log_level"),
        ("log_format = \"xml\"", "log_format"),
        ("run_root = \"relative/dir\"", "run_root"),
        ("store_root = \"\"", "store_root"),
        ("[vm]\nvcpus = 0", "vm.vcpus"),
        ("[vm]\nvcpus = 33", "vm.vcpus"),
        ("[vm]\nvcpus = \"two\"", "vm.vcpus"),
        ("[vm]\nmemory_mib = 1", "vm.memory_mib"),
        ("[vm]\nmemory_mib = 1000000000", "vm.memory_mib"),
        ("[vm]\nboot_timeout_secs = 0", "vm.boot_timeout_secs"),
        ("[vm]\nrequest_timeout_secs = 0", "vm.request_timeout_secs"),
        ("[vm]\nvmm_log_level = \"chatty\"", "vm.vmm_log_level"),
        ("[vm]\nkernel = \"\"", "vm.kernel"),
        ("[virtiofsd]\ncache = \"sometimes\"", "virtiofsd.cache"),
        (
            "[virtiofsd]\nconfinement = \"chroot\"",
            "virtiofsd.confinement",
        ),
        (
            "[virtiofsd]\nthread_pool_size = -1",
            "virtiofsd.thread_pool_size",
        ),
        ("[cli]\nisolation = \"jail\"", "cli.isolation"),
    ] {
        let e = Config::parse(t, "/etc/bulkhead/config.toml").unwrap_err();
        let m = error_chain(&e);
        assert!(m.starts_with("/etc/bulkhead/config.toml"), "{t}: {m}");
        assert!(m.contains(key), "{t}: {m}");
    }
}

#[test]
fn a_bad_environment_variable_is_named() {
    let layers = Layer::environment(&env(&[("BULKHEAD_LOG", "loud")]));
    let m = error_chain(&Config::load(&layers).unwrap_err());
    assert!(
        m.contains("environment variable BULKHEAD_LOG") && m.contains("log_level"),
        "{m}"
    );
    let layers = Layer::environment(&env(&[("BULKHEAD_RUN_ROOT", "run")]));
    let m = error_chain(&Config::load(&layers).unwrap_err());
    assert!(
        m.contains("BULKHEAD_RUN_ROOT") && m.contains("absolute"),
        "{m}"
    );
}

#[test]
fn layers_apply_in_order_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let vendor = dir.path().join("defaults.toml");
    std::fs::write(
        &vendor,
        "log_level = \"info\"\n[vm]\nkernel = \"/vendor/k\"\nvcpus = 2\n",
    )
    .unwrap();
    let admin = dir.path().join("config.toml");
    std::fs::write(
        &admin,
        "[vm]\nkernel = \"/admin/k\"\n[virtiofsd]\ncache = \"never\"\n",
    )
    .unwrap();
    let mut layers = vec![
        Layer::OptionalFile(vendor.clone()),
        Layer::OptionalFile(dir.path().join("missing.toml")),
        Layer::File(admin.clone()),
    ];
    let cfg = Config::load(&layers).unwrap();
    assert_eq!(cfg.log_level, log::LevelFilter::Info); // vendor
    assert_eq!(cfg.vm.vcpus, 2); // vendor, not touched by the admin's [vm]
    assert_eq!(cfg.vm.kernel, PathBuf::from("/admin/k")); // admin over vendor
    assert_eq!(cfg.virtiofsd.cache, FsCache::Never);
    assert_eq!(cfg.vm.memory_mib, VmSection::default().memory_mib); // built-in

    // The environment over the files, a flag over the environment.
    layers.extend(Layer::environment(&env(&[
        ("BULKHEAD_KERNEL", "/env/k"),
        ("BULKHEAD_LOG", "debug"),
        ("BULKHEAD_ISOLATION", "container"),
        ("UNRELATED", "x"),
    ])));
    let cfg = Config::load(&layers).unwrap();
    assert_eq!(cfg.vm.kernel, PathBuf::from("/env/k"));
    assert_eq!(cfg.log_level, log::LevelFilter::Debug);
    assert_eq!(cfg.cli.isolation, Isolation::Container);
    assert_eq!(cfg.vm.vcpus, 2);
    layers.push(Layer::flag("--log-level", "log_level", "error"));
    assert_eq!(
        Config::load(&layers).unwrap().log_level,
        log::LevelFilter::Error
    );
    layers.push(Layer::flag("--log-level", "log_level", "noisy"));
    let m = error_chain(&Config::load(&layers).unwrap_err());
    assert!(m.starts_with("--log-level: log_level"), "{m}");
}

#[test]
fn a_named_file_must_exist_the_default_ones_need_not() {
    let missing = Path::new("/nonexistent/bulkhead.toml");
    let e = Config::load(&[Layer::File(missing.into())]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Read { path, .. } if path == missing),
        "{e:?}"
    );
    assert!(error_chain(&e).contains("/nonexistent/bulkhead.toml"));
    assert_eq!(
        Config::load(&[Layer::OptionalFile(missing.into())]).unwrap(),
        Config::default()
    );
}

#[test]
fn standard_layers_name_the_files_in_order() {
    let named = |l: &[Layer]| -> Vec<Layer> { l.iter().take(2).cloned().collect() };
    let vendor = Layer::OptionalFile(VENDOR_DEFAULTS_PATH.into());
    assert_eq!(
        named(&standard_layers(None, &env(&[]))),
        [
            vendor.clone(),
            Layer::OptionalFile(DEFAULT_CONFIG_PATH.into())
        ]
    );
    assert_eq!(
        named(&standard_layers(None, &env(&[(CONFIG_ENV, "/a.toml")]))),
        [vendor.clone(), Layer::File("/a.toml".into())]
    );
    // The CLI's --config wins over the variable.
    let l = standard_layers(Some(Path::new("/b.toml")), &env(&[(CONFIG_ENV, "/a.toml")]));
    assert_eq!(named(&l), [vendor, Layer::File("/b.toml".into())]);
    let l = standard_layers(
        None,
        &env(&[("BULKHEAD_VMM", "/v"), ("BULKHEAD_KERNEL", "")]),
    );
    assert_eq!(
        l.len(),
        3,
        "an empty BULKHEAD_KERNEL counts as unset: {l:?}"
    );
}

#[test]
fn empty_initrd_and_virtiofsd_mean_none() {
    let layers = Layer::environment(&env(&[
        ("BULKHEAD_INITRD", ""),
        ("BULKHEAD_VIRTIOFSD", ""),
        ("BULKHEAD_CMDLINE", ""),
    ]));
    let cfg = Config::load(&layers).unwrap();
    assert_eq!(cfg.initrd_path().unwrap(), None);
    assert_eq!(cfg.virtiofsd_options().unwrap(), None);
    assert_eq!(cfg.cmdline(), None);
    let cfg = Config::parse("[virtiofsd]\nbinary = \"\"\n[vm]\ninitrd = \"\"", "t").unwrap();
    assert_eq!(cfg.initrd_path().unwrap(), None);
    assert_eq!(cfg.virtiofsd_path().unwrap(), None);
}

#[test]
fn explicit_paths_are_used_and_missing_programs_named() {
    let cfg = Config::parse(
        "log_format = \"json\"\n[vm]\nkernel = \"/k/vmlinux\"\ninitrd = \"/k/initrd\"\nvmm = \"/bin/sh\"\n\
         cmdline = \"console=ttyS0\"\nvmm_log_level = \"debug\"\nboot_timeout_secs = 5\n\
         [virtiofsd]\nbinary = \"sh\"\nconfinement = \"none\"\ncache = \"always\"\nthread_pool_size = 0\n",
        "t",
    )
    .unwrap();
    let files = cfg.vm_files().unwrap();
    assert_eq!(files.kernel, PathBuf::from("/k/vmlinux"));
    assert_eq!(files.initrd, Some(PathBuf::from("/k/initrd")));
    assert_eq!(files.vmm, PathBuf::from("/bin/sh"));
    let fsd = files.virtiofsd.clone().unwrap();
    assert!(fsd.binary.ends_with("sh") && fsd.binary.is_absolute());
    assert_eq!(
        (fsd.confinement, fsd.cache, fsd.thread_pool_size),
        (FsConfinement::None, FsCache::Always, 0)
    );
    let size = VmSize {
        vcpus: 1,
        memory_mib: 256,
    };
    let sc = cfg.sandbox_config(&files, "pod1", Path::new("/run/x"), size);
    assert_eq!(sc.run_root, PathBuf::from("/run/x"));
    assert_eq!(sc.cmdline.as_deref(), Some("console=ttyS0"));
    assert_eq!(sc.vmm_log_level.as_deref(), Some("debug"));
    // The log format reaches the VMM (`--log-format`) and the agent (the command line).
    assert_eq!(sc.log_format, Some(LogFormat::Json));
    assert_eq!(
        sc.guest_cmdline().as_deref(),
        Some("console=ttyS0 bulkhead.log_format=json")
    );
    assert_eq!(sc.agent_timeout, std::time::Duration::from_secs(5));
    assert_eq!((sc.size, sc.virtiofsd), (size, files.virtiofsd));

    let cfg = Config::parse("[vm]\nvmm = \"/nonexistent/vmm\"", "t").unwrap();
    let m = error_chain(&cfg.vmm_path().unwrap_err());
    assert!(
        m.contains("/nonexistent/vmm") && m.contains("vm.vmm") && m.contains("BULKHEAD_VMM"),
        "{m}"
    );
    let cfg = Config::parse("[virtiofsd]\nbinary = \"no-such-virtiofsd\"", "t").unwrap();
    assert!(matches!(
        cfg.virtiofsd_options(),
        Err(ConfigError::NotFound {
            key: "virtiofsd.binary",
            ..
        })
    ));
}

#[test]
fn log_level_names_are_lowercase() {
    let cfg = Config::parse("log_level = \"DEBUG\"", "t").unwrap();
    assert_eq!(cfg.log_level_name(), "debug");
    let t = toml::Table::try_from(&cfg).unwrap();
    assert_eq!(t["log_level"].as_str(), Some("debug"));
}

#[test]
fn the_nic_data_path_is_auto_vhost_or_userspace() {
    use crate::NetBackend;
    assert_eq!(Config::default().vm.net_backend, NetBackend::Auto);
    let c = Config::parse("[vm]\nnet_backend = \"userspace\"\n", "test").unwrap();
    assert_eq!(c.vm.net_backend, NetBackend::Userspace);
    assert!(!NetBackend::Userspace.uses_vhost());
    assert!(NetBackend::Vhost.uses_vhost());
    assert_eq!(
        NetBackend::Auto.uses_vhost(),
        std::path::Path::new(crate::sandbox::VHOST_NET_DEVICE).exists()
    );
    let e = Config::parse("[vm]\nnet_backend = \"fast\"\n", "test").unwrap_err();
    assert!(e.to_string().contains("net_backend"), "{e}");
}
