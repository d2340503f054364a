//! The `raftgraph` binary as a user runs it: certificates from `raftgraph certs`, three
//! `raftgraph server` processes (configured by a file, by `RAFTGRAPH_*` environment variables
//! and by flags) with TLS on both listeners, `raftgraph cluster init`, CLI writes and reads with
//! JSON output, a plaintext CLI refused with words, a CLI error's exit code and message,
//! SIGTERM stopping each server cleanly, and a restart refused on another member's data
//! directory. Waits poll with a 60 s bound; nothing asserts how long anything took.
// Real processes on the real clock: these polls are bounded waits, not simulated time.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raftgraph");
const WAIT: Duration = Duration::from_secs(60);

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The CA every CLI call trusts (set once by the test, before any call).
static CA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn cli(args: &[&str]) -> Output {
    cli_as(None, args)
}

/// A CLI call carrying `token` (`RAFTGRAPH_TOKEN`).
fn cli_as(token: Option<&str>, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RAFTGRAPH_ENDPOINTS");
    match token {
        Some(t) => c.env("RAFTGRAPH_TOKEN", t),
        None => c.env_remove("RAFTGRAPH_TOKEN"),
    };
    match CA.get() {
        Some(ca) => c.env("RAFTGRAPH_CA", ca),
        None => c.env_remove("RAFTGRAPH_CA"),
    };
    c.output().unwrap()
}

/// `raftgraph certs …` in `dir`, checked.
fn certs(dir: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("certs")
        .args(args)
        .args(["--cluster-id", "bin", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// Polls `f` until it returns true (60 s bound).
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(addr: &str) -> serde_json::Value {
    json(&cli(&[
        "cluster",
        "status",
        "--endpoints",
        addr,
        "--output",
        "json",
    ]))[0]
        .clone()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server(configure: impl FnOnce(&mut Command)) -> Child {
    let mut c = Command::new(BIN);
    c.arg("server");
    for (k, _) in std::env::vars() {
        if k.starts_with("RAFTGRAPH_") {
            c.env_remove(k);
        }
    }
    configure(&mut c);
    c.spawn().unwrap()
}

fn write_config(dir: &Path, addr: &str, peer: &str) -> std::path::PathBuf {
    let path = dir.join("node1.toml");
    let certs = dir.join("certs");
    let text = format!(
        "cluster_id = \"bin\"\nmember_id = 1\nlisten = \"{addr}\"\npeer_listen = \"{peer}\"\n\
         data_dir = \"{}\"\nsecrets_key_file = \"{}\"\n\
         [certs]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [raft]\nheartbeat_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n\
         [storage]\nwrite_buffer_bytes = 8388608\nblock_cache_bytes = 8388608\n\
         wal_segment_bytes = 8388608\n",
        dir.join("node1").display(),
        dir.join("secrets.keys").display(),
        certs.join("ca.pem").display(),
        certs.join("member-1.pem").display(),
        certs.join("member-1.key").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn three_server_processes_serve_the_cli_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs(&certs_dir, &["init"]);
    for id in ["1", "2", "3"] {
        certs(&certs_dir, &["member", "--id", id, "--host", "127.0.0.1"]);
    }
    let cert = |name: &str| certs_dir.join(name).to_str().unwrap().to_string();
    let key_mode = std::fs::metadata(certs_dir.join("member-1.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        key_mode.permissions().mode() & 0o777,
        0o600,
        "keys are 0600"
    );
    // The members' keyring: made 0600, a second key appended (it seals from then on).
    let keys = dir.path().join("secrets.keys");
    for id in ["k1", "k2"] {
        let out = cli(&[
            "secrets",
            "keygen",
            "--id",
            id,
            "--file",
            keys.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(id), "{out:?}");
    }
    let keys_meta = std::fs::metadata(&keys).unwrap();
    assert_eq!(keys_meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&keys).unwrap().lines().count(), 2);
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let config = write_config(dir.path(), &addrs[0], &peers[0]);
    // A keyring others may read is refused at start, saying so (and never showing a key).
    let loose = dir.path().join("loose.keys");
    std::fs::copy(&keys, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut refused = server(|c| {
        c.args(["--config", config.to_str().unwrap()])
            .args(["--secrets-key-file", loose.to_str().unwrap()])
            .stderr(std::process::Stdio::piped());
    });
    assert!(!wait_exit(&mut refused).success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("secrets_key_file") && err.contains("chmod 600"),
        "{err}"
    );
    let key_hex = std::fs::read_to_string(&keys).unwrap();
    let first_key = key_hex.split_whitespace().nth(1).unwrap();
    assert!(!err.contains(first_key), "the key is not shown");
    // Node 1 from a file; node 2 from the environment (with the member id's older variable
    // name); node 3 from flags (over a file that names another member: flags win).
    let mut nodes = vec![
        server(|c| {
            c.args(["--config", config.to_str().unwrap()]);
        }),
        server(|c| {
            c.env("RAFTGRAPH_CLUSTER_ID", "bin")
                .env("RAFTGRAPH_NODE_ID", "2")
                .env("RAFTGRAPH_LISTEN", &addrs[1])
                .env("RAFTGRAPH_PEER_LISTEN", &peers[1])
                .env("RAFTGRAPH_CA", cert("ca.pem"))
                .env("RAFTGRAPH_CERT", cert("member-2.pem"))
                .env("RAFTGRAPH_KEY", cert("member-2.key"))
                .env("RAFTGRAPH_DATA_DIR", dir.path().join("node2"))
                .env("RAFTGRAPH_SECRETS_KEY_FILE", &keys);
        }),
        server(|c| {
            c.args(["--config", config.to_str().unwrap()])
                .args(["--member-id", "3", "--listen", &addrs[2]])
                .args(["--peer-listen", &peers[2]])
                .args([
                    "--cert",
                    &cert("member-3.pem"),
                    "--key",
                    &cert("member-3.key"),
                ])
                .args(["--data-dir", dir.path().join("node3").to_str().unwrap()]);
        }),
    ];
    // A client without the CA speaks plaintext; the TLS listener tells it why it is refused.
    wait_until("node 1 to refuse a plaintext client", || {
        let out = cli(&[
            "cluster",
            "status",
            "--endpoints",
            &addrs[0],
            "--output",
            "json",
        ]);
        String::from_utf8_lossy(&out.stdout).contains("requires TLS")
    });
    CA.set(cert("ca.pem")).unwrap();
    for (i, a) in addrs.iter().enumerate() {
        wait_until(&format!("node {} to answer", i + 1), || {
            status(a)["member"].as_u64() == Some(i as u64 + 1)
        });
    }
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut init = vec!["cluster", "init", "--endpoints", &addrs[0]];
    for m in &members {
        init.extend(["--member", m]);
    }
    // Without a member's certificate, init is refused (and nothing is initialised).
    let refused = cli(&init);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Unauthenticated") && err.contains("member's certificate"),
        "{err}"
    );
    let token_file = dir.path().join("admin.token");
    let (member_cert, member_key) = (cert("member-1.pem"), cert("member-1.key"));
    init.extend(["--client-cert", &member_cert, "--client-key", &member_key]);
    init.extend(["--admin-token-file", token_file.to_str().unwrap()]);
    let out = cli(&init);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin token file is the owner's only"
    );
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(admin.starts_with("rgt_"), "{admin}");
    wait_until("a leader", || {
        addrs.iter().any(|a| status(a)["state"] == "leader")
    });

    let endpoints = addrs.join(",");
    // No token: refused.
    let out = cli(&["tenant", "list", "--endpoints", &endpoints]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    let t = json(&cli_as(
        Some(&admin),
        &[
            "tenant",
            "create",
            "acme",
            "--max-nodes",
            "10",
            "--endpoints",
            &endpoints,
            "--output",
            "json",
        ],
    ));
    assert_eq!(t["max_nodes"], 10);
    // A write token for tenant acme, shown once; every graph call below carries it.
    let made = json(&cli_as(
        Some(&admin),
        &[
            "tenant",
            "token",
            "create",
            "acme",
            "--role",
            "write",
            "--endpoints",
            &endpoints,
            "--output",
            "json",
        ],
    ));
    assert_eq!(made["role"], "write");
    let acme = made["token"].as_str().unwrap().to_string();
    // The replicated limits: a cluster admin changes one, the others keep their values; a
    // tenant token may not read them. The CA from RAFTGRAPH_CA_CERT alone.
    let limits = |token: &str, args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(["cluster", "limits"])
            .args(args)
            .args(["--endpoints", &endpoints, "--output", "json"])
            .env_remove("RAFTGRAPH_ENDPOINTS")
            .env_remove("RAFTGRAPH_CA")
            .env("RAFTGRAPH_CA_CERT", CA.get().unwrap())
            .env("RAFTGRAPH_TOKEN", token);
        c.output().unwrap()
    };
    let set = json(&limits(&admin, &["set", "--tenants-max", "300"]));
    assert_eq!(set["tenants_max"], 300);
    assert_eq!(set["sessions_per_principal_max"], 10_000, "kept");
    assert_eq!(json(&limits(&admin, &["get"]))["tenants_max"], 300);
    let out = limits(&admin, &["set", "--sessions-per-principal-max", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sessions_per_principal_max"), "{err}");
    let out = limits(&acme, &["get"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PermissionDenied"), "{err}");
    let cli = |args: &[&str]| cli_as(Some(&acme), args);
    let created = json(&cli(&[
        "node",
        "create",
        "--tenant",
        "acme",
        "--label",
        "Person",
        "--prop",
        "name=Ada",
        "--prop",
        "born=1815",
        "--endpoints",
        &addrs[1],
        "--output",
        "json",
    ]));
    let id = created[0]["id"].as_u64().unwrap().to_string();
    // Read back through another node (a linearizable follower read).
    let node = json(&cli(&[
        "node",
        "get",
        "--tenant",
        "acme",
        &id,
        "--endpoints",
        &addrs[2],
        "--output",
        "json",
    ]));
    assert_eq!(node["properties"]["name"], "Ada");
    assert_eq!(node["properties"]["born"], 1815);
    let table = cli(&[
        "node",
        "get",
        "--tenant",
        "acme",
        &id,
        "--endpoints",
        &endpoints,
    ]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("Person"));

    // A CLI error: exit code 1, the code and the server's message on stderr.
    let out = cli(&[
        "node",
        "get",
        "--tenant",
        "nosuch",
        "1",
        "--endpoints",
        &endpoints,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PermissionDenied") && err.contains("nosuch"),
        "another tenant's name is refused before it is looked up: {err}"
    );
    let out = cli_as(
        Some(&admin),
        &[
            "node",
            "get",
            "--tenant",
            "nosuch",
            "1",
            "--endpoints",
            &endpoints,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NotFound") && err.contains("nosuch"), "{err}");

    // SIGTERM: each server hands off what it must and exits 0.
    for n in &nodes {
        sigterm(n);
    }
    for n in &mut nodes {
        let s = wait_exit(n);
        assert!(s.success(), "exit status {s:?}");
    }

    // Node 1's directory refuses to serve as node 2.
    let mut wrong = server(|c| {
        c.args(["--config", config.to_str().unwrap(), "--node-id", "2"])
            .args([
                "--cert",
                &cert("member-2.pem"),
                "--key",
                &cert("member-2.key"),
            ]);
        c.stderr(std::process::Stdio::piped());
    });
    let s = wait_exit(&mut wrong);
    assert!(!s.success());
    let mut err = String::new();
    use std::io::Read;
    wrong
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("belongs to cluster \"bin\" member 1"), "{err}");
}

#[test]
fn a_server_reloads_its_certificates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    for d in [&old, &new] {
        certs(d, &["init"]);
        certs(d, &["member", "--id", "1", "--host", "127.0.0.1"]);
    }
    // The server reads `live/`, which holds the old CA's files first.
    let live = dir.path().join("live");
    let install = |from: &Path| {
        std::fs::create_dir_all(&live).unwrap();
        for f in ["ca.pem", "member-1.pem", "member-1.key"] {
            std::fs::copy(from.join(f), live.join(f)).unwrap();
        }
    };
    install(&old);
    let (addr, peer) = (free_addr(), free_addr());
    let path = |f: &str| live.join(f).to_str().unwrap().to_string();
    let mut server = server(|c| {
        c.args(["--cluster-id", "bin", "--member-id", "1"])
            .args(["--listen", &addr, "--peer-listen", &peer])
            .args(["--ca", &path("ca.pem"), "--cert", &path("member-1.pem")])
            .args(["--key", &path("member-1.key")])
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()]);
    });
    // A client pinned to a CA: `cluster status` over TLS trusting only it.
    let answers = |ca: &Path| {
        let out = Command::new(BIN)
            .args([
                "cluster",
                "status",
                "--endpoints",
                &addr,
                "--output",
                "json",
            ])
            .args(["--ca", ca.join("ca.pem").to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"member\":1")
    };
    wait_until("the server to answer clients of the old CA", || {
        answers(&old)
    });
    assert!(
        !answers(&new),
        "a client of the new CA trusted the old certificate"
    );

    install(&new);
    assert!(
        Command::new("kill")
            .args(["-HUP", &server.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until("a client of the new CA to connect after SIGHUP", || {
        answers(&new)
    });
    assert!(
        !answers(&old),
        "the old certificate still served a new connection"
    );
    sigterm(&server);
    assert!(wait_exit(&mut server).success());
}
