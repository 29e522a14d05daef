//! `bulkhead` with `--isolation container` on this host (root, cgroup2, busybox): exit
//! codes, process options, detached lifecycle, exec, bad input, and that nothing is left
//! behind. Prints `SKIPPED <test>: <reason>` and passes where the host cannot run containers.

mod support;

use std::time::Duration;

use support::{host_ready, skip, stderr, stdout, Env};

macro_rules! require_host {
    () => {
        if let Err(r) = host_ready() {
            skip(&r);
            return;
        }
    };
}

#[test]
fn exit_codes_pass_through() {
    require_host!();
    let env = Env::new("container");
    let o = env.run(&["run", "--rm", "-q", "bulkhead/demo", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    let o = env.run(&["run", "--rm", "-q", "bulkhead/demo", "true"]);
    assert_eq!(o.status.code(), Some(0));
    // Killed by a signal: 128 + n (PID 1 cannot be killed from inside its namespace).
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "k",
        "bulkhead/demo",
        "sleep",
        "100",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&["kill", "-s", "KILL", "k"]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&["logs", "-f", "k"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&env.run(&["inspect", "k"]).stdout).unwrap();
    assert_eq!(v[0]["exit_code"], 137);
    env.run(&["rm", "k"]);
    env.assert_clean();
}

#[test]
fn env_workdir_user_hostname_and_host_kernel() {
    require_host!();
    let env = Env::new("container");
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp",
        "-u",
        "nobody",
        "--hostname",
        "box1",
        "bulkhead/demo",
        "sh",
        "-c",
        "echo \"$FOO|$(pwd)|$(id -u)|$(hostname)|$(uname -r)\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let host_kernel = nix::sys::utsname::uname().unwrap();
    let want = format!(
        "bar baz|/tmp|65534|box1|{}\n",
        host_kernel.release().to_string_lossy()
    );
    assert_eq!(stdout(&o), want);
    // The image's default command (sh) runs when none is given; stdin with -i.
    let mut child = env
        .cmd(&["run", "--rm", "-q", "-i", "bulkhead/demo"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-stdin; exit 5\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "from-stdin\n");
    assert_eq!(o.status.code(), Some(5));
    env.assert_clean();
}

#[test]
fn writes_never_reach_the_image_and_read_only_root() {
    require_host!();
    let env = Env::new("container");
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "sh",
        "-c",
        "echo x > /bin/added && rm /bin/ls && test -e /bin/added",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "bulkhead/demo",
        "sh",
        "-c",
        "test ! -e /bin/added && test -e /bin/ls",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--read-only",
        "bulkhead/demo",
        "touch",
        "/x",
    ]);
    assert_ne!(o.status.code(), Some(0));
    env.assert_clean();
}

#[test]
fn volumes() {
    require_host!();
    let env = Env::new("container");
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("in"), "hello").unwrap();
    let rw = format!("{}:/data", vol.path().display());
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-v",
        &rw,
        "bulkhead/demo",
        "sh",
        "-c",
        "cat /data/in && echo out > /data/out",
    ]);
    assert_eq!(stdout(&o), "hello");
    assert_eq!(
        std::fs::read_to_string(vol.path().join("out")).unwrap(),
        "out\n"
    );
    let ro = format!("{}:/data:ro", vol.path().display());
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "-v",
        &ro,
        "bulkhead/demo",
        "sh",
        "-c",
        "echo no > /data/x",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!vol.path().join("x").exists());
    env.assert_clean();
}

#[test]
fn detached_lifecycle() {
    require_host!();
    let env = Env::new("container");
    let script = "echo hello; trap 'echo bye; exit 3' TERM; while true; do sleep 0.1; done";
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "web",
        "bulkhead/demo",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(o.status.code(), Some(0));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 64);

    let ps = stdout(&env.run(&["ps"]));
    assert!(
        ps.contains("web") && ps.contains("running") && ps.contains(&id[..12]),
        "{ps}"
    );

    let mut logs = String::new();
    for _ in 0..50 {
        logs = stdout(&env.run(&["logs", "web"]));
        if logs.contains("hello") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(logs, "hello\n");

    // exec: output and exit code; -e, -u.
    let o = env.run(&[
        "exec",
        "-e",
        "X=1",
        "-u",
        "nobody",
        "web",
        "sh",
        "-c",
        "echo $X $(id -u); exit 4",
    ]);
    assert_eq!(stdout(&o), "1 65534\n");
    assert_eq!(o.status.code(), Some(4));

    // rm of a running container without -f is refused.
    let o = env.run(&["rm", "web"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("is running"), "{}", stderr(&o));

    let inspect = stdout(&env.run(&["inspect", "web"]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["status"], "running");
    assert_eq!(v[0]["isolation"], "container");

    let o = env.run(&["stop", "-t", "5", "web"]);
    assert_eq!(o.status.code(), Some(0));
    let ps = stdout(&env.run(&["ps"]));
    assert!(!ps.contains("web"), "{ps}");
    let ps = stdout(&env.run(&["ps", "-a"]));
    assert!(ps.contains("web") && ps.contains("exited (3)"), "{ps}");
    assert_eq!(stdout(&env.run(&["logs", "web"])), "hello\nbye\n");

    let o = env.run(&["rm", "web"]);
    assert_eq!(o.status.code(), Some(0));
    env.assert_clean();
}

#[test]
fn stop_kills_after_the_grace_period_and_rm_force() {
    require_host!();
    let env = Env::new("container");
    // PID 1 without a TERM handler ignores SIGTERM: stop must fall back to SIGKILL.
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "stubborn",
        "bulkhead/demo",
        "sleep",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let t = std::time::Instant::now();
    let o = env.run(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(15));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["inspect", "stubborn"]))).unwrap();
    assert_eq!(v[0]["exit_code"], 137);
    env.run(&["rm", "stubborn"]);

    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "forced",
        "bulkhead/demo",
        "sleep",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&["rm", "-f", "forced"]);
    assert_eq!(o.status.code(), Some(0));
    env.assert_clean();
}

#[test]
fn logs_follow_ends_with_the_container() {
    require_host!();
    let env = Env::new("container");
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "counter",
        "bulkhead/demo",
        "sh",
        "-c",
        "for i in 1 2 3; do echo $i; sleep 0.3; done",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&["logs", "-f", "counter"]);
    assert_eq!(stdout(&o), "1\n2\n3\n");
    env.run(&["rm", "counter"]);
    env.assert_clean();
}

#[test]
fn bad_input_gives_clear_errors_and_leaves_nothing() {
    require_host!();
    let env = Env::new("container");
    let cases: &[(&[&str], &str)] = &[
        (&["run", "no/such-image"], "unknown image"),
        (&["run", "Bad::Reference!!"], "unknown image"),
        (&["run", "--cpus", "0", "bulkhead/demo", "true"], "--cpus"),
        (
            &["run", "--memory", "lots", "bulkhead/demo", "true"],
            "memory",
        ),
        (
            &["run", "-v", "relative:/x", "bulkhead/demo", "true"],
            "absolute",
        ),
        (
            &[
                "run",
                "-v",
                "/nonexistent-dir-xyz:/x",
                "bulkhead/demo",
                "true",
            ],
            "does not exist",
        ),
        (
            &["run", "--isolation", "cloud", "bulkhead/demo", "true"],
            "cloud",
        ),
        (
            &["run", "--name", "bad/name", "bulkhead/demo", "true"],
            "name",
        ),
        (
            &["run", "-u", "nosuchuser", "bulkhead/demo", "true"],
            "nosuchuser",
        ),
        (&["run", "bulkhead/demo", "/no/such/program"], "program"),
        (&["rm", "nothing-here"], "no such container"),
        (&["stop", "nothing-here"], "no such container"),
        (&["exec", "nothing-here", "true"], "no such container"),
    ];
    for (args, needle) in cases {
        let o = env.run(args);
        assert_ne!(o.status.code(), Some(0), "{args:?} succeeded");
        let err = stderr(&o).to_lowercase();
        assert!(
            err.contains(&needle.to_lowercase()) || (*needle == "program" && !err.is_empty()),
            "{args:?}: {err}"
        );
        assert!(
            env.containers_left().is_empty(),
            "{args:?} left a container"
        );
    }
    // A name in use.
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "dup",
        "bulkhead/demo",
        "sleep",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = env.run(&["run", "--name", "dup", "bulkhead/demo", "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));
    assert_eq!(env.containers_left().len(), 1);
    env.run(&["rm", "-f", "dup"]);
    env.assert_clean();
}

#[test]
fn signals_to_a_foreground_run_reach_the_container() {
    require_host!();
    let env = Env::new("container");
    for (sig, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let script = format!(
            "trap 'echo got-{name}; exit 5' {name}; echo ready; while true; do sleep 0.1; done"
        );
        let mut child = env
            .cmd(&["run", "--rm", "-q", "bulkhead/demo", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(&first, b"ready\n");
        // SAFETY: kill with our child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(rest, format!("got-{name}\n"));
        assert_eq!(child.wait().unwrap().code(), Some(5));
    }
    env.assert_clean();
}

/// The bridge network: `-p` answers on the host's loopback, `ps` and `inspect` show the
/// port and address, the container's /etc/hosts names it, and `rm -f` releases the
/// address and the namespace. Traffic only to 127.0.0.1.
#[test]
fn bridge_network_publishes_ports_and_releases_everything() {
    require_host!();
    if !support::cni_ready() {
        skip("needs the CNI plugins in /usr/lib/cni (containernetworking-plugins)");
        return;
    }
    let env = Env::new("container");
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--name",
        "web",
        "-p",
        "127.0.0.1:18080:80",
        "bulkhead/demo",
        "nc",
        "-ll",
        "-p",
        "80",
        "-e",
        "echo",
        "hi",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut answer = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:18080") {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            answer.clear();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            if answer == "hi\n" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answer, "hi\n");
    let ps = stdout(&env.run(&["ps"]));
    assert!(
        ps.contains("PORTS") && ps.contains("127.0.0.1:18080->80/tcp"),
        "{ps}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&env.run(&["inspect", "web"]).stdout).unwrap();
    let net = &v[0]["network_settings"];
    let ip = net["ip_address"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.89.251."), "{net}");
    assert_eq!(net["gateway"], "10.89.251.1");
    assert_eq!(net["mode"], "bridge");
    assert_eq!(net["mac_address"].as_str().unwrap().len(), 17, "{net}");
    let hosts = stdout(&env.run(&["exec", "web", "cat", "/etc/hosts"]));
    assert!(hosts.contains(&ip), "{hosts}");
    let addr = stdout(&env.run(&["exec", "web", "ip", "-4", "addr", "show", "eth0"]));
    assert!(addr.contains(&format!("{ip}/24")), "{addr}");
    let lease = std::path::Path::new(support::TEST_IPAM_DIR)
        .join("bulkhead")
        .join(&ip);
    assert!(lease.exists());
    env.run(&["rm", "-f", "web"]);
    env.assert_clean();
    assert!(!lease.exists(), "the address was not released");
    assert!(std::net::TcpStream::connect("127.0.0.1:18080").is_err());
}

/// Docker's conventions: `-e KEY` passes this shell's value or leaves KEY out, `--env-file`
/// (with -e winning), usage errors and `--platform` for another architecture exit 125.
#[test]
fn docker_env_rules_usage_status_and_platform() {
    require_host!();
    let env = Env::new("container");
    let file = env.dir.path().join("app.env");
    std::fs::write(&file, "# settings\nA=from-file\nB=file\nCOPIED\n").unwrap();
    let o = env
        .cmd(&[
            "run",
            "--rm",
            "-q",
            "--network",
            "none",
            "--platform",
            "linux/amd64",
            "--env-file",
            file.to_str().unwrap(),
            "-e",
            "B=flag",
            "-e",
            "BULKHEAD_E2E_SURELY_UNSET",
            "bulkhead/demo",
            "sh",
            "-c",
            "echo \"$A|$B|$COPIED|${BULKHEAD_E2E_SURELY_UNSET-unset}\"",
        ])
        .env("COPIED", "from-here")
        .env_remove("BULKHEAD_E2E_SURELY_UNSET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "from-file|flag|from-here|unset\n");

    let o = env.run(&["run", "--platform", "linux/arm64", "bulkhead/demo", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("only linux/amd64"), "{}", stderr(&o));
    let o = env.run(&["run", "--no-such-flag", "bulkhead/demo"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let o = env.run(&["version", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["arch"], "amd64");

    // ps --filter and --format, images --format.
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--network",
        "none",
        "--name",
        "fmt1",
        "bulkhead/demo",
        "sleep",
        "60",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ps = |args: &[&str]| {
        let mut all = vec!["ps"];
        all.extend_from_slice(args);
        let o = env.run(&all);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(
        ps(&[
            "--filter",
            "name=fmt",
            "--format",
            "{{.Names}}|{{.State}}|{{.Isolation}}"
        ]),
        "fmt1|running|container\n"
    );
    assert_eq!(ps(&["--filter", "status=exited", "-q"]), "");
    let o = env.run(&["ps", "--format", "{{.Nope}}"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("the fields are"), "{}", stderr(&o));
    let o = env.run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(
        stdout(&o).lines().any(|l| l == "bulkhead/demo:latest"),
        "{}",
        stdout(&o)
    );
    env.run(&["rm", "-f", "fmt1"]);

    // wait: blocks until the container exits and prints its status.
    let o = env.run(&[
        "run",
        "-d",
        "-q",
        "--network",
        "none",
        "--name",
        "w1",
        "bulkhead/demo",
        "sh",
        "-c",
        "sleep 1; exit 5",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["wait", "w1"]);
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), "5\n".to_owned()),
        "{}",
        stderr(&o)
    );
    // Waiting for an exited container answers at once; an unknown one is an error.
    let o = env.run(&["wait", "w1", "nosuch"]);
    assert_eq!(o.status.code(), Some(125));
    assert_eq!(stdout(&o), "5\n");
    env.run(&["rm", "w1"]);
    env.assert_clean();
}

#[test]
fn network_usage_errors() {
    require_host!();
    let env = Env::new("container");
    let o = env.run(&[
        "run",
        "--network",
        "host",
        "-p",
        "8080:80",
        "bulkhead/demo",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("-p publishes ports of the bridge network"));
    let o = env.run(&[
        "run",
        "--isolation",
        "vm",
        "--network",
        "host",
        "bulkhead/demo",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("--network host cannot share the host's network"));
    let o = env.run(&["run", "-p", "8080:80/sctp", "bulkhead/demo", "true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(stderr(&o).contains("unknown protocol"), "{}", stderr(&o));
    if !support::cni_ready() {
        return;
    }
    // none: loopback only, and up.
    let o = env.run(&[
        "run",
        "--rm",
        "-q",
        "--network",
        "none",
        "bulkhead/demo",
        "sh",
        "-c",
        "ip -o link | cut -d: -f2 | tr -d ' \\n'; ip link show lo | grep -c UP",
    ]);
    assert_eq!(stdout(&o), "lo1\n", "{}", stderr(&o));
    env.assert_clean();
}
