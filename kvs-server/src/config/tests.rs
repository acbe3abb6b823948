use super::*;
use clap::CommandFactory;

/// Resolves a command line as `kvs-server` does.
fn args(extra: &[&str]) -> Result<NodeConfig, ConfigError> {
    let mut v = vec!["kvs-server"];
    v.extend_from_slice(extra);
    let matches = Cli::command().try_get_matches_from(v)?;
    let cli = Cli::from_arg_matches(&matches)?;
    cli.replica.merged(&matches)?.resolve()
}

/// The text of the error `extra` is refused with (for clap's own messages).
fn refusal(extra: &[&str]) -> String {
    args(extra).err().map(|e| e.to_string()).unwrap_or_default()
}

const OK: &[&str] = &[
    "--id",
    "1",
    "--peers",
    "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
    "--client-addr",
    "127.0.0.1:6001",
    "--data-dir",
    "/tmp/x",
];

#[test]
fn flags_resolve_with_defaults() {
    let c = args(OK).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.id, 1);
    assert_eq!(c.peers.len(), 3);
    assert_eq!(c.cluster_id, "kvs");
    assert_eq!(c.initial_cluster_state, None);
    assert_eq!(c.initial_cluster_token, None);
    assert_eq!(c.election_timeout_ms, (1000, 2000));
    assert_eq!(c.snapshot_every, defaults::SNAPSHOT_EVERY_SLOTS);
    assert_eq!(c.heartbeat_interval_ms, defaults::HEARTBEAT_MS);
    assert_eq!(
        c.request_timeout,
        Duration::from_millis(defaults::REQUEST_TIMEOUT_MS)
    );
    assert_eq!(c.acceptor_down_ms, (200, 2000));
    assert_eq!(
        c.limits.connections_max,
        ClientLimits::default().connections_max
    );
    assert_eq!(c.acceptor_fail_prob, 0.0);
    assert_eq!(c.acceptor_fail_mode, FailMode::Crash);
    assert_eq!(c.admin_addr, None);
}

#[test]
fn admin_addr_from_flag_and_file_and_checked() {
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--admin-addr", "127.0.0.1:8001"]);
    let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin_addr.as_deref(), Some("127.0.0.1:8001"));
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--admin-addr", "8001"]);
    let err = args(&v).err();
    assert!(
        matches!(&err, Some(ConfigError::BadAddress { flag, addr }) if flag == "--admin-addr" && addr == "8001"),
        "{err:?}"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kvs.toml");
    std::fs::write(&path, "admin_addr = \"127.0.0.1:8002\"\n").unwrap_or_else(|e| panic!("{e}"));
    let p = path.to_string_lossy().to_string();
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--config", &p]);
    let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin_addr.as_deref(), Some("127.0.0.1:8002"));
}

#[test]
fn acceptor_failure_settings_from_flags_and_file() {
    let mut v = OK.to_vec();
    v.extend_from_slice(&[
        "--acceptor-fail-prob",
        "0.05",
        "--acceptor-fail-mode",
        "amnesia",
    ]);
    let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.acceptor_fail_prob, c.acceptor_fail_mode),
        (0.05, FailMode::Amnesia)
    );
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--acceptor-fail-mode", "sometimes"]);
    let err = refusal(&v);
    assert!(err.contains("possible values: crash, amnesia"), "{err}");
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--acceptor-fail-prob", "NaN"]);
    let err = args(&v).err();
    assert!(
        matches!(err, Some(ConfigError::FailProbability { got }) if got.is_nan()),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kvs.toml");
    let toml = "acceptor_fail_prob = 0.1\nacceptor_fail_mode = \"amnesia\"\n";
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let p = path.to_string_lossy().to_string();
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--config", &p]);
    let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.acceptor_fail_prob, c.acceptor_fail_mode),
        (0.1, FailMode::Amnesia)
    );
    v.extend_from_slice(&["--acceptor-fail-mode", "crash"]);
    let c = args(&v).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.acceptor_fail_mode, FailMode::Crash);
}

#[test]
fn bad_input_names_the_flag() {
    let mut v = OK.to_vec();
    v[3] = "1=127.0.0.1:7001,x=1.2.3.4:5";
    let err = args(&v).err();
    assert!(
        matches!(&err, Some(ConfigError::BadNodeId { flag, id }) if flag == "--peers" && id == "x"),
        "{err:?}"
    );
    let mut v = OK.to_vec();
    v[1] = "9";
    assert!(matches!(args(&v), Err(ConfigError::NotAMember { id: 9 })));
    let mut v = OK.to_vec();
    v[5] = "localhost";
    let err = args(&v).err();
    assert!(
        matches!(&err, Some(ConfigError::BadAddress { flag, .. }) if flag == "--client-addr"),
        "{err:?}"
    );
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--acceptor-fail-prob", "1.5"]);
    assert!(matches!(
        args(&v),
        Err(ConfigError::FailProbability { got }) if got == 1.5
    ));
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--election-timeout-ms", "500..100"]);
    assert!(matches!(
        args(&v),
        Err(ConfigError::RangeInverted {
            min: 500,
            max: 100,
            ..
        })
    ));
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--heartbeat-ms", "1000"]);
    assert!(matches!(
        args(&v),
        Err(ConfigError::Heartbeat {
            heartbeat_ms: 1000,
            election_min_ms: 1000
        })
    ));
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--max-frame-bytes", "10"]);
    assert!(matches!(
        args(&v),
        Err(ConfigError::OutOfRange {
            flag: "--max-frame-bytes",
            got: 10,
            ..
        })
    ));
    let err = args(&["--id", "1"]).err();
    assert!(
        matches!(
            err,
            Some(ConfigError::Missing {
                flag: "--peers",
                ..
            })
        ),
        "{err:?}"
    );
    // The messages name the flag and what is wrong.
    assert_eq!(refusal(&["--id", "1"]), "missing --peers",);
    assert_eq!(
        refusal(&["--peers", "1=a:1"]),
        "missing --id (this replica's id)",
    );
}

#[test]
fn config_file_fills_in_and_flags_win() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kvs.toml");
    let toml = "id = 2\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002\"\nclient_addr = \"127.0.0.1:6002\"\ndata_dir = \"/tmp/d\"\nsnapshot_every = 50\n";
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let p = path.to_string_lossy().to_string();
    let c = args(&["--config", &p, "--snapshot-every", "70"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.id, c.snapshot_every, c.peers.len()), (2, 70, 2));
    std::fs::write(
        &path,
        format!("{toml}initial_cluster_state = \"existing\"\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let c = args(&["--config", &p]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.initial_cluster_state, Some(InitialClusterState::Existing));
    let c =
        args(&["--config", &p, "--initial-cluster-state", "new"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.initial_cluster_state, Some(InitialClusterState::New));
    let err = refusal(&["--config", &p, "--initial-cluster-state", "old"]);
    assert!(err.contains("possible values: new, existing"), "{err}");
    std::fs::write(&path, "idd = 3\n").unwrap_or_else(|e| panic!("{e}"));
    let err = args(&["--config", &p]).err();
    assert!(
        matches!(err, Some(ConfigError::ParseFile { .. })),
        "{err:?}"
    );
    assert!(refusal(&["--config", &p]).contains("unknown field"));
    // Settings that are flags only are unknown in the file.
    for key in ["config = \"x\"", "unsafe_local_reads = true"] {
        std::fs::write(&path, format!("{toml}{key}\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            refusal(&["--config", &p]).contains("unknown field"),
            "{key}"
        );
    }
    let missing = dir.path().join("absent.toml").to_string_lossy().to_string();
    assert!(matches!(
        args(&["--config", &missing]),
        Err(ConfigError::ReadFile { .. })
    ));
}

#[test]
fn every_setting_of_the_file_is_read_and_a_flag_or_the_environment_wins() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("kvs.toml");
    let toml = r#"
id = 2
peers = "1=127.0.0.1:7001,2=127.0.0.1:7002"
client_addr = "127.0.0.1:6002"
client_addrs = "1=127.0.0.1:6001,2=127.0.0.1:6002"
data_dir = "/tmp/d"
cluster_id = "c"
initial_cluster_state = "existing"
initial_cluster_token = "t"
snapshot_every = 50
sessions_max = 9
acceptor_fail_prob = 0.25
acceptor_fail_mode = "amnesia"
acceptor_down_ms = "10..20"
heartbeat_ms = 30
election_timeout_ms = "300..400"
request_timeout_ms = 500
max_connections = 6
max_frame_bytes = 2048
client_held_bytes_max = 7000
client_stall_timeout_ms = 800
log_level = "debug"
"#;
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let p = path.to_string_lossy().to_string();
    let c = args(&["--config", &p]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.id, c.peers.len(), c.client_addrs.len()), (2, 2, 2));
    assert_eq!(
        (c.client_addr.as_str(), c.cluster_id.as_str()),
        ("127.0.0.1:6002", "c")
    );
    assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    assert_eq!(c.initial_cluster_state, Some(InitialClusterState::Existing));
    assert_eq!(c.initial_cluster_token.as_deref(), Some("t"));
    assert_eq!((c.snapshot_every, c.sessions_max), (50, 9));
    assert_eq!(
        (
            c.acceptor_fail_prob,
            c.acceptor_fail_mode,
            c.acceptor_down_ms
        ),
        (0.25, FailMode::Amnesia, (10, 20))
    );
    assert_eq!(
        (c.heartbeat_interval_ms, c.election_timeout_ms),
        (30, (300, 400))
    );
    assert_eq!(c.request_timeout, Duration::from_millis(500));
    assert_eq!(
        (
            c.limits.connections_max,
            c.limits.frame_bytes_max,
            c.limits.held_bytes_max
        ),
        (6, 2048, 7000)
    );
    assert_eq!(c.limits.stall_timeout, Duration::from_millis(800));
    // Flags win over the file.
    let c = args(&["--config", &p, "--id", "1", "--heartbeat-ms", "40"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.id, c.heartbeat_interval_ms, c.snapshot_every),
        (1, 40, 50)
    );
    // The log level of the file, unless a flag gives one.
    let matches = Cli::command()
        .try_get_matches_from(["kvs-server", "--config", &p])
        .unwrap_or_else(|e| panic!("{e}"));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("KVS_LOG").is_none() {
        let merged = cli
            .replica
            .merged(&matches)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
    }
    let matches = Cli::command()
        .try_get_matches_from(["kvs-server", "--config", &p, "--log-level", "warn"])
        .unwrap_or_else(|e| panic!("{e}"));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{e}"));
    let merged = cli
        .replica
        .merged(&matches)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(merged.log_level.as_deref(), Some("warn"));
}

#[test]
fn a_cluster_id_or_token_that_would_not_read_back_is_refused() {
    let long = "x".repeat(wire::CLUSTER_ID_BYTES_MAX + 1);
    for (flag, value, says) in [
        ("--cluster-id", "prod\r", "control character"),
        ("--cluster-id", "a\nb", "control character"),
        ("--cluster-id", "", "1 to 64 bytes"),
        ("--cluster-id", long.as_str(), "1 to 64 bytes"),
        ("--initial-cluster-token", "t\u{0}", "control character"),
    ] {
        let mut v = OK.to_vec();
        v.extend_from_slice(&[flag, value]);
        let err = args(&v).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.starts_with(flag) && err.contains(says),
            "{flag} {value:?}: {err}"
        );
    }
    let mut v = OK.to_vec();
    v.extend_from_slice(&["--cluster-id", "prod-eu", "--initial-cluster-token", "t 1"]);
    let config = args(&v).ok();
    assert_eq!(config.map(|c| c.cluster_id), Some("prod-eu".to_owned()));
}
