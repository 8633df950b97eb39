//! Where the key-value stores live: Spin's runtime configuration file
//! (`--runtime-config-file`, the file `spin up` takes) maps each store label
//! to an SQLite file (relative to the file's directory) or to memory, and a
//! component that names a label nothing defines stops start-up.

use serde_json::Value;
use spindle_tests::{HostBuilder, client, manifest};

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "stores"

[[trigger.http]]
route = "/probe/..."
component = "probe"

[component.probe]
source = "{{PROBE}}"
key_value_stores = ["default", "cache"]
"#;

async fn incr(host: &spindle_tests::Host, store: &str, key: &str) -> i64 {
    let resp = client()
        .get(host.url(&format!("/probe/incr/{key}?store={store}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["value"].as_i64().unwrap()
}

/// The rows of `path`'s Spin table, as (store, key).
fn rows(path: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT store, key FROM spin_key_value ORDER BY store, key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_configuration_puts_each_store_where_it_says() {
    let (dir, path) = manifest(APP);
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("runtime-config.toml");
    std::fs::write(
        &config,
        r#"
[key_value_store.default]
type = "spin"
path = "data/main.db"

[key_value_store.cache]
type = "spin"
"#,
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let start = || {
        HostBuilder::new(&path)
            .state_dir(state.path())
            .arg("--runtime-config-file")
            .arg(config.to_str().unwrap())
            .start()
    };

    let host = start();
    assert!(
        host.stdout().contains(&format!(
            "Storing default key-value data to \"{}\"",
            config_dir.join("data/main.db").display()
        )),
        "{}",
        host.stdout()
    );
    assert_eq!(incr(&host, "default", "k").await, 1);
    assert_eq!(incr(&host, "default", "k").await, 2);
    // Another label is another store: its own counter.
    assert_eq!(incr(&host, "cache", "k").await, 1);
    host.stop();

    // `default` is the file the configuration names (relative to its own
    // directory), not the state directory's.
    let main = config_dir.join("data/main.db");
    assert_eq!(rows(&main), vec![("default".into(), "k".into())]);
    assert!(!state.path().join("sqlite_key_value.db").exists());

    // `cache` has no path: memory, gone with the host; `default` stays.
    let host = start();
    assert_eq!(incr(&host, "default", "k").await, 3);
    assert_eq!(incr(&host, "cache", "k").await, 1);
    host.stop();

    // Backups follow the configuration to the `default` store's file.
    let backup = dir.path().join("backup.jsonl");
    let out = std::process::Command::new(spindle_tests::spindle_bin())
        .arg("export")
        .arg("-f")
        .arg(&path)
        .arg("--runtime-config-file")
        .arg(&config)
        .arg("-o")
        .arg(&backup)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "exported 1 entries (1 store(s): default) from {}",
            main.display()
        )),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_nothing_defines_or_a_bad_configuration_stops_start_up() {
    let (dir, path) = manifest(APP);
    // Without a configuration, `cache` is not defined.
    let err = HostBuilder::new(&path).try_start().err().expect("refused");
    assert!(
        err.contains("component.probe.key_value_stores: unknown key-value store label \"cache\""),
        "{err}"
    );
    let config = dir.path().join("rc.toml");
    // `spindle check` says the same, and accepts the app with the
    // configuration that defines the label.
    let check = |extra: &[&str]| {
        std::process::Command::new(spindle_tests::spindle_bin())
            .arg("check")
            .arg("-f")
            .arg(&path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown key-value store label \"cache\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&config, "[key_value_store.cache]\ntype = \"spin\"\n").unwrap();
    let out = check(&["--runtime-config-file", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (text, words) in [
        (
            "[key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1\"\n",
            "key_value_store.cache.type: \"redis\" is not a store type",
        ),
        (
            "[key_value_store.cache]\ntype = \"spin\"\nfile = \"x.db\"\n",
            "key_value_store.cache.file: is not a field",
        ),
        (
            "[variables_provider]\ntype = \"vault\"\n",
            "variables_provider: Spindle's host reads only",
        ),
        ("[key_value_store.cache\n", "rc.toml: "),
    ] {
        std::fs::write(&config, text).unwrap();
        let err = HostBuilder::new(&path)
            .arg("--runtime-config-file")
            .arg(config.to_str().unwrap())
            .try_start()
            .err()
            .expect("refused");
        assert!(err.contains(words), "{text}: {err}");
    }
    let err = HostBuilder::new(&path)
        .arg("--runtime-config-file")
        .arg(dir.path().join("missing.toml").to_str().unwrap())
        .try_start()
        .err()
        .expect("refused");
    assert!(err.contains("cannot read runtime configuration"), "{err}");
}

/// Two labels may name one file (as in Spin): each keeps its own keys in
/// it, through one connection.
#[tokio::test(flavor = "multi_thread")]
async fn two_labels_in_one_file_keep_their_own_keys() {
    let (dir, path) = manifest(APP);
    let config = dir.path().join("rc.toml");
    std::fs::write(
        &config,
        "[key_value_store.default]\ntype = \"spin\"\npath = \"one.db\"\n\n[key_value_store.cache]\ntype = \"spin\"\npath = \"one.db\"\n",
    )
    .unwrap();
    let host = HostBuilder::new(&path)
        .arg("--runtime-config-file")
        .arg(config.to_str().unwrap())
        .start();
    // Racing increments on both labels: each label's count is exact.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let url = host.url(&format!(
            "/probe/incr/n?store={}",
            if i % 2 == 0 { "default" } else { "cache" }
        ));
        tasks.push(tokio::spawn(async move {
            let resp = client().get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(incr(&host, "default", "n").await, 21);
    assert_eq!(incr(&host, "cache", "n").await, 21);
    host.stop();
    assert_eq!(
        rows(&dir.path().join("one.db")),
        vec![("cache".into(), "n".into()), ("default".into(), "n".into())]
    );
}
