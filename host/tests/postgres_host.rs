//! The real `sandboxer-host run` on a real PostgreSQL server (`support/pg.rs`): the
//! ledger and the sandbox statuses in the database named by `[database] url`,
//! `--database` or `SANDBOXER_DATABASE_URL`; a lifecycle charged and verified through the
//! CLI on that database; two hosts on one database (created on one, destroyed on the
//! other, settled once); and a start on a database it cannot use fails naming the URL
//! with its password hidden.

#[path = "support/http_host.rs"]
mod http_host;
#[path = "support/pg.rs"]
mod pg;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_host::{ADMIN, Host, Setup, TOKEN_A};
use serde_json::Value;

fn entries(h: &Host, token: &str) -> Vec<Value> {
    let (s, v) = h.get("/v1/credits/entries", token);
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

fn kinds(h: &Host) -> Vec<String> {
    entries(h, TOKEN_A)
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// `url` with its password shown as `***`.
fn redacted(url: &str) -> String {
    url.replace(pg::PASSWORD, "***")
}

/// Runs the `sandboxer` CLI on `setup`'s folders with `SANDBOXER_DATABASE_URL` set to
/// `env_url` when given; (success, stdout, stderr).
fn cli_env(setup: &Setup, env_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .args(["--extensions-dir", setup.extensions().to_str().unwrap()])
        .args(["--profiles-dir", setup.profiles().to_str().unwrap()])
        .args(["--state-dir", setup.state().to_str().unwrap()])
        .args(args)
        .env("SANDBOXER_DATABASE_URL", env_url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_host_on_postgres_charges_a_lifecycle_that_the_cli_verifies_there() {
    let url = pg::fresh_database();
    let setup = Setup::new();
    setup.write_config(&format!("[database]\nurl = \"{url}\"\n"));
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let sb = h.create(TOKEN_A, "saas-stub");
    let id = sb["id"].as_str().unwrap().to_owned();
    assert_eq!(sb["state"], "running");
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "destroyed");
    let k = kinds(&h);
    assert!(
        k.contains(&"hold".to_owned()) && k.contains(&"charge".to_owned()),
        "{k:?}"
    );
    // Nothing went to a SQLite file; the rows are in PostgreSQL.
    assert!(!setup.state().join("ledger.sqlite3").exists());
    let mut client = pg::server().client(url.rsplit('/').next().unwrap());
    let state: String = client
        .query_one("SELECT state FROM manager_sandboxes WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(state, "destroyed");
    assert!(!h.log.lock().unwrap().contains(pg::PASSWORD));

    // The CLI on the same database: by flag and by environment, the URL shown redacted.
    let (ok, out, err) = setup.cli(&["--database", &url, "credits", "verify"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("postgres://sandboxer:***@127.0.0.1:"), "{out}");
    assert!(!out.contains(pg::PASSWORD) && !err.contains(pg::PASSWORD));
    let (ok, out, err) = cli_env(&setup, &url, &["--json", "credits", "show", "a"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("USD"), "{out}");
    // Without a database the CLI reads the (absent) SQLite ledger: no such tenant money.
    let (ok, out, _) = setup.cli(&["credits", "verify"]);
    assert!(!ok, "{out}");
    h.terminate();
}

#[test]
fn two_hosts_on_one_database_one_creates_the_other_destroys_settled_once() {
    let url = pg::fresh_database();
    let (s1, s2) = (Setup::new(), Setup::new());
    s1.write_config("");
    s2.write_config("");
    // Host 1 by flag, host 2 by its config file.
    s2.write_config(&format!("[database]\nurl = \"{url}\"\n"));
    let h1 = Host::start_with(
        &s1,
        &[
            "--config",
            s1.config().to_str().unwrap(),
            "--database",
            &url,
        ],
    );
    let h2 = Host::start(&s2);
    h1.grant("a", "5.00");
    let sb = h1.create(TOKEN_A, "saas-stub");
    let id = sb["id"].as_str().unwrap().to_owned();
    // Host 2 sees it, and destroys it.
    let (s, v) = h2.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!((s, v["state"].as_str()), (200, Some("running")), "{v}");
    let (s, v) = h2.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200, "{v}\n{}", h2.log.lock().unwrap());
    assert_eq!(v["state"], "destroyed");
    // Destroyed again through host 1: the same answer, no second charge.
    let (s, v) = h1.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "destroyed");
    let charges = kinds(&h1).iter().filter(|k| *k == "charge").count();
    assert_eq!(charges, 1, "{:?}", kinds(&h1));
    assert_eq!(kinds(&h1), kinds(&h2));
    let (ok, out, err) = s1.cli(&["--database", &url, "credits", "verify"]);
    assert!(ok, "{out}\n{err}");
    h1.terminate();
    h2.terminate();
}

/// Runs `sandboxer-host run` with `args` and waits (at most a minute) for it to exit;
/// (exit success, stderr).
fn run_to_exit(setup: &Setup, args: &[&str], env_url: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxer-host"));
    cmd.args(["--extensions-dir", setup.extensions().to_str().unwrap()])
        .args(["--profiles-dir", setup.profiles().to_str().unwrap()])
        .args(["--state-dir", setup.state().to_str().unwrap()])
        .arg("run")
        .args(["--listen", "127.0.0.1:0", "--config"])
        .arg(setup.config())
        .args(args)
        .env_remove("SANDBOXER_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(u) = env_url {
        cmd.env("SANDBOXER_DATABASE_URL", u);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the host did not exit on a database it cannot use");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.success(), err)
}

#[test]
fn a_start_on_a_database_it_cannot_use_fails_naming_the_url_without_its_password() {
    let url = pg::fresh_database();
    let setup = Setup::new();
    let wrong = url.replace(pg::PASSWORD, "not-the-password");
    // Wrong password, by environment.
    let (ok, err) = run_to_exit(&setup, &[], Some(&wrong));
    assert!(!ok);
    assert!(
        err.contains(&wrong.replace("not-the-password", "***")),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password") && !err.contains("panicked"),
        "{err}"
    );
    assert!(err.contains("password"), "{err}");
    // The flag wins over the environment (the env's URL is fine, the flag's is wrong).
    let (ok, err) = run_to_exit(&setup, &["--database", &wrong], Some(&url));
    assert!(!ok);
    assert!(err.contains("***"), "{err}");
    // Unreachable: nothing listens on the port.
    let port = pg::server().port;
    let nowhere = url.replace(&format!(":{port}/"), ":1/");
    let (ok, err) = run_to_exit(&setup, &["--database", &nowhere], None);
    assert!(!ok);
    assert!(
        err.contains(&redacted(&nowhere)) && !err.contains(pg::PASSWORD),
        "{err}"
    );
    // Another application's database.
    let other = pg::fresh_database();
    let mut c = pg::server().client(other.rsplit('/').next().unwrap());
    c.batch_execute("CREATE TABLE orders (id INT)").unwrap();
    let (ok, err) = run_to_exit(&setup, &["--database", &other], None);
    assert!(!ok);
    assert!(err.contains("another application"), "{err}");
    assert!(err.contains(&redacted(&other)), "{err}");
    // A newer schema.
    let (ok, _) = {
        let h = Host::start_with(
            &setup,
            &[
                "--config",
                setup.config().to_str().unwrap(),
                "--database",
                &url,
            ],
        );
        h.grant("a", "1.00");
        (h.terminate(), ())
    };
    let _ = ok;
    let mut c = pg::server().client(url.rsplit('/').next().unwrap());
    c.batch_execute("UPDATE sandboxer_schema SET version = 42 WHERE component = 'ledger'")
        .unwrap();
    let (ok, err) = run_to_exit(&setup, &["--database", &url], None);
    assert!(!ok);
    assert!(err.contains("42") && err.contains(&redacted(&url)), "{err}");
    // Not a PostgreSQL URL at all: refused by the flag's parser.
    let (ok, err) = run_to_exit(&setup, &["--database", "mysql://u:pw@h/db"], None);
    assert!(!ok);
    assert!(err.contains("PostgreSQL") && !err.contains(":pw@"), "{err}");
    let _ = ADMIN;
}
