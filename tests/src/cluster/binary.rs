//! Finding the `kvs-server` executable.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::bail;

/// Environment variable naming the server executable, overriding the target-dir default.
pub const SERVER_BIN_ENV: &str = "KVS_SERVER_BIN";

const SERVER_BIN_NAME: &str = "kvs-server";

/// Locates the server executable: `explicit` if given, else `$KVS_SERVER_BIN`, else
/// `<target dir>/debug/kvs-server`, where the target dir is `$CARGO_TARGET_DIR` (relative paths
/// are taken from the workspace root) or else the workspace's `target/`. If that file is
/// missing, the `debug/` directory holding the running test executable is tried too (it is the
/// right one when the target dir was configured elsewhere, e.g. in `.cargo/config.toml`).
///
/// Errors name every path tried and say to run `cargo build --bins` first: `cargo test` does
/// not build the server for a library's tests.
pub fn find_server_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    resolve_server_binary(&Lookup {
        explicit: explicit.map(Path::to_path_buf),
        env_bin: env::var_os(SERVER_BIN_ENV).map(PathBuf::from),
        target_dir: env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
        manifest_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        current_exe: env::current_exe().ok(),
    })
}

/// Everything the lookup depends on, gathered so the rules can be tested without touching the
/// process environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lookup {
    pub(crate) explicit: Option<PathBuf>,
    pub(crate) env_bin: Option<PathBuf>,
    pub(crate) target_dir: Option<PathBuf>,
    /// The `tests` package directory; its parent is the workspace root.
    pub(crate) manifest_dir: PathBuf,
    pub(crate) current_exe: Option<PathBuf>,
}

pub(crate) fn resolve_server_binary(lookup: &Lookup) -> anyhow::Result<PathBuf> {
    if let Some(path) = &lookup.explicit {
        return existing(path, "ClusterOptions::binary");
    }
    if let Some(path) = lookup
        .env_bin
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        return existing(path, SERVER_BIN_ENV);
    }
    let workspace = lookup.manifest_dir.parent().unwrap_or(&lookup.manifest_dir);
    let target_dir = match &lookup.target_dir {
        Some(dir) if !dir.as_os_str().is_empty() => workspace.join(dir), // No-op if absolute.
        _ => workspace.join("target"),
    };
    let mut tried = vec![target_dir.join("debug").join(SERVER_BIN_NAME)];
    // The test executable lives in `<target>/debug/deps/`.
    if let Some(debug_dir) = lookup
        .current_exe
        .as_deref()
        .and_then(Path::parent)
        .and_then(Path::parent)
    {
        let sibling = debug_dir.join(SERVER_BIN_NAME);
        if !tried.contains(&sibling) {
            tried.push(sibling);
        }
    }
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "{SERVER_BIN_NAME} executable not found (looked at {}); run `cargo build --bins` first, \
         or set {SERVER_BIN_ENV}",
        tried.join(", ")
    )
}

fn existing(path: &Path, source: &str) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        bail!(
            "{SERVER_BIN_NAME} executable {} (from {source}) does not exist; run `cargo build \
             --bins` first",
            path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake workspace: `<root>/tests` is the manifest dir, and `touch` creates files.
    struct Workspace {
        dir: tempfile::TempDir,
    }

    impl Workspace {
        fn new() -> Workspace {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("tests")).unwrap();
            Workspace { dir }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn touch(&self, rel: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"").unwrap();
            path
        }

        fn lookup(&self) -> Lookup {
            Lookup {
                manifest_dir: self.path("tests"),
                ..Lookup::default()
            }
        }
    }

    #[test]
    fn explicit_path_wins_and_must_exist() {
        let ws = Workspace::new();
        let explicit = ws.touch("bin/my-server");
        ws.touch("target/debug/kvs-server");
        let lookup = Lookup {
            explicit: Some(explicit.clone()),
            env_bin: Some(ws.touch("env-server")),
            ..ws.lookup()
        };
        assert_eq!(resolve_server_binary(&lookup).unwrap(), explicit);

        let missing = ws.path("bin/missing");
        let lookup = Lookup {
            explicit: Some(missing.clone()),
            ..ws.lookup()
        };
        let err = resolve_server_binary(&lookup).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("ClusterOptions::binary"), "{err}");
        assert!(err.contains("cargo build --bins"), "{err}");
    }

    #[test]
    fn env_variable_comes_next() {
        let ws = Workspace::new();
        ws.touch("target/debug/kvs-server");
        let from_env = ws.touch("env-server");
        let lookup = Lookup {
            env_bin: Some(from_env.clone()),
            ..ws.lookup()
        };
        assert_eq!(resolve_server_binary(&lookup).unwrap(), from_env);

        let lookup = Lookup {
            env_bin: Some(ws.path("nope")),
            ..ws.lookup()
        };
        let err = resolve_server_binary(&lookup).unwrap_err().to_string();
        assert!(err.contains("KVS_SERVER_BIN"), "{err}");
        assert!(err.contains("cargo build --bins"), "{err}");
    }

    #[test]
    fn cargo_target_dir_then_workspace_target() {
        let ws = Workspace::new();
        let in_custom = ws.touch("custom/debug/kvs-server");
        let in_default = ws.touch("target/debug/kvs-server");
        let absolute = Lookup {
            target_dir: Some(ws.path("custom")),
            ..ws.lookup()
        };
        assert_eq!(resolve_server_binary(&absolute).unwrap(), in_custom);
        let relative = Lookup {
            target_dir: Some(PathBuf::from("custom")),
            ..ws.lookup()
        };
        assert_eq!(resolve_server_binary(&relative).unwrap(), in_custom);
        assert_eq!(resolve_server_binary(&ws.lookup()).unwrap(), in_default);
    }

    #[test]
    fn falls_back_to_the_test_executables_directory() {
        let ws = Workspace::new();
        let beside = ws.touch("elsewhere/debug/kvs-server");
        let lookup = Lookup {
            current_exe: Some(ws.path("elsewhere/debug/deps/tests-0123")),
            ..ws.lookup()
        };
        assert_eq!(resolve_server_binary(&lookup).unwrap(), beside);
    }

    #[test]
    fn missing_binary_error_lists_paths_and_the_fix() {
        let ws = Workspace::new();
        let lookup = Lookup {
            target_dir: Some(ws.path("custom")),
            current_exe: Some(ws.path("elsewhere/debug/deps/tests-0123")),
            ..ws.lookup()
        };
        let err = resolve_server_binary(&lookup).unwrap_err().to_string();
        for expected in [
            ws.path("custom/debug/kvs-server"),
            ws.path("elsewhere/debug/kvs-server"),
        ] {
            assert!(err.contains(&expected.display().to_string()), "{err}");
        }
        assert!(err.contains("run `cargo build --bins` first"), "{err}");
    }
}
