//! Image config -> OCI runtime process, with Docker's override rules: a
//! user entrypoint resets the image cmd, a user cmd replaces the image cmd,
//! env is merged with user values winning, workdir and user are replaced.

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, ProcessBuilder, UserBuilder};

use crate::error::{Error, Result};

/// Default PATH when neither the image nor the user set one (as Docker).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the user asked for on top of the image config.
#[derive(Clone, Debug, Default)]
pub struct ProcessOverrides {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries; win over the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `uid[:gid]` (numeric) or a name resolved through `passwd`/`group`.
    pub user: Option<String>,
    pub terminal: bool,
}

/// Contents of the rootfs's `/etc/passwd` and `/etc/group`, for user names.
#[derive(Clone, Debug, Default)]
pub struct UserDb {
    pub passwd: String,
    pub group: String,
}

fn merge_env(image: &[String], user: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kv in image.iter().chain(user) {
        let key = kv.split('=').next().unwrap_or(kv);
        if let Some(slot) = out.iter_mut().find(|e| e.split('=').next() == Some(key)) {
            *slot = kv.clone();
        } else {
            out.push(kv.clone());
        }
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

fn lookup(db: &str, name: &str) -> Option<(u32, u32)> {
    db.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) {
            let id = f.get(2)?.parse().ok()?;
            let gid = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, gid))
        } else {
            None
        }
    })
}

/// Resolves `user[:group]` to numeric ids.
pub fn resolve_user(spec: &str, db: &UserDb) -> Result<(u32, u32)> {
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, lookup_uid(&db.passwd, uid).unwrap_or(0)),
        Err(_) => lookup(&db.passwd, u).ok_or_else(|| Error::InvalidUser(spec.to_string()))?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(&db.group, g)
                .map(|(gid, _)| gid)
                .ok_or_else(|| Error::InvalidUser(spec.to_string()))?,
        },
    };
    Ok((uid, gid))
}

fn lookup_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
}

/// Builds the runtime spec process for an image config and user overrides.
pub fn runtime_process(
    config: &ImageConfiguration,
    overrides: &ProcessOverrides,
    users: &UserDb,
) -> Result<Process> {
    let cfg = config.config().clone().unwrap_or_default();
    let (entrypoint, cmd) = match (&overrides.entrypoint, &overrides.cmd) {
        (Some(ep), cmd) => (ep.clone(), cmd.clone().unwrap_or_default()),
        (None, Some(cmd)) => (cfg.entrypoint().clone().unwrap_or_default(), cmd.clone()),
        (None, None) => (
            cfg.entrypoint().clone().unwrap_or_default(),
            cfg.cmd().clone().unwrap_or_default(),
        ),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(Error::Layout(
            "no command: the image has no entrypoint or cmd and none was given".into(),
        ));
    }
    let env = merge_env(&cfg.env().clone().unwrap_or_default(), &overrides.env);
    let cwd = overrides
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let user_spec = overrides
        .user
        .clone()
        .or_else(|| cfg.user().clone())
        .unwrap_or_default();
    let (uid, gid) = resolve_user(&user_spec, users)?;
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .build()
        .map_err(|e| Error::Layout(format!("runtime user: {e}")))?;
    ProcessBuilder::default()
        .terminal(overrides.terminal)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(user)
        .build()
        .map_err(|e| Error::Layout(format!("runtime process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfiguration {
        let v = |x: Option<&[&str]>| x.map(|a| a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {
                "Entrypoint": v(ep), "Cmd": v(cmd),
                "Env": ["PATH=/bin", "A=1", "B=2"], "WorkingDir": "/srv", "User": "app"
            }
        }))
        .unwrap()
    }

    fn users() -> UserDb {
        UserDb {
            passwd: "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n".into(),
            group: "root:x:0:\nstaff:x:50:\n".into(),
        }
    }

    #[test]
    fn docker_override_rules() {
        let img = image(Some(&["/init"]), Some(&["serve", "-v"]));
        let p = runtime_process(&img, &ProcessOverrides::default(), &users()).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/init", "serve", "-v"]);
        assert_eq!(p.cwd().to_str(), Some("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1001));

        let o = ProcessOverrides {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        };
        let p = runtime_process(&img, &o, &users()).unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/init", "x"]);

        let o = ProcessOverrides {
            entrypoint: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        let p = runtime_process(&img, &o, &users()).unwrap();
        assert_eq!(
            p.args().as_ref().unwrap(),
            &["/bin/sh"],
            "entrypoint resets cmd"
        );

        let o = ProcessOverrides {
            env: vec!["B=3".into(), "C=4".into()],
            user: Some("0:staff".into()),
            workdir: Some("/tmp".into()),
            ..Default::default()
        };
        let p = runtime_process(&img, &o, &users()).unwrap();
        assert_eq!(
            p.env().as_ref().unwrap(),
            &["PATH=/bin", "A=1", "B=3", "C=4"]
        );
        assert_eq!((p.user().uid(), p.user().gid()), (0, 50));
        assert_eq!(p.cwd().to_str(), Some("/tmp"));
    }

    #[test]
    fn defaults_and_errors() {
        let img = image(None, None);
        assert!(runtime_process(&img, &ProcessOverrides::default(), &users()).is_err());
        let o = ProcessOverrides {
            cmd: Some(vec!["sh".into()]),
            user: Some("nobody".into()),
            ..Default::default()
        };
        assert!(matches!(
            runtime_process(&img, &o, &users()),
            Err(Error::InvalidUser(_))
        ));
        assert_eq!(
            merge_env(&[], &["X=1".into()]),
            vec![DEFAULT_PATH.to_string(), "X=1".into()]
        );
        assert_eq!(resolve_user("12", &UserDb::default()).unwrap(), (12, 0));
    }
}
