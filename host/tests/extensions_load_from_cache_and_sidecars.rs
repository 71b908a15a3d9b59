//! Loading: a second start loads compiled extensions from the precompiled cache instead of
//! compiling; a corrupt cache artifact is recompiled, not fatal; sidecars load one
//! component under two ids with two configurations (each seeing only its own); a sidecar
//! with an unknown key is skipped naming the file and the key; `sandboxer extensions
//! list` and `check` report all of it; `prune-cache` deletes only unusable artifacts.

mod support;

use rust_decimal::Decimal;
use sandboxer_host::domain::Kind;
use sandboxer_host::layers::runtime::{ArtifactSource, CacheStats};
use support::*;

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_second_start_loads_from_the_cache_without_compiling() {
    let cache = tempfile::tempdir().unwrap();
    let first = runtime(cache.path());
    let ext = first.load_file(&saas_stub()).unwrap();
    assert_eq!(ext.artifact_source(), &ArtifactSource::Compiled);
    assert_eq!(
        first.cache_stats(),
        CacheStats {
            compiled: 1,
            ..CacheStats::default()
        }
    );
    let artifacts = cache_files(cache.path());
    assert_eq!(artifacts.len(), 1);
    let name = artifacts[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(ext.version_hash()),
        "artifact {name} is keyed by the wasm's sha256"
    );

    // Same process, same component under another id: compiled once, shared.
    let again = first
        .load_spec(spec(&saas_stub(), "stub-two", &[]))
        .unwrap();
    assert_eq!(again.artifact_source(), &ArtifactSource::Shared);
    assert_eq!(first.cache_stats().compiled, 1);

    // A new runtime (a restart) over the same cache folder: no compile.
    let second = runtime(cache.path());
    let ext = second.load_file(&saas_stub()).unwrap();
    assert_eq!(ext.artifact_source(), &ArtifactSource::Cache);
    assert_eq!(
        second.cache_stats(),
        CacheStats {
            disk_hits: 1,
            ..CacheStats::default()
        }
    );
    ext.estimate_cost(&request()).unwrap();
}

#[test]
fn a_corrupt_cache_artifact_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let expected = runtime(cache.path())
        .load_file(&saas_stub())
        .unwrap()
        .estimate_cost(&request())
        .unwrap();
    let artifact = cache_files(cache.path()).remove(0);
    let good = std::fs::read(&artifact).unwrap();

    for (what, bytes) in [
        ("garbage", b"this is not a compiled component".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&artifact, &bytes).unwrap();
        let rt = runtime(cache.path());
        let ext = rt
            .load_file(&saas_stub())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            matches!(ext.artifact_source(), ArtifactSource::Recompiled { .. }),
            "{what}: {:?}",
            ext.artifact_source()
        );
        assert_eq!(
            rt.cache_stats(),
            CacheStats {
                compiled: 1,
                recovered: 1,
                ..CacheStats::default()
            },
            "{what}"
        );
        assert_eq!(ext.estimate_cost(&request()).unwrap(), expected, "{what}");
        // The recompiled artifact replaced the bad one: the next start uses it.
        let next = runtime(cache.path());
        assert_eq!(
            next.load_file(&saas_stub()).unwrap().artifact_source(),
            &ArtifactSource::Cache,
            "{what}"
        );
    }
}

#[test]
fn one_component_under_two_ids_answers_with_each_configuration() {
    let cache = tempfile::tempdir().unwrap();
    let dir = folder_with(&[(&saas_stub(), "saas-stub.wasm")]);
    std::fs::write(
        dir.path().join("local-pool.toml"),
        "component = \"saas-stub.wasm\"\nkind = \"self-hosted\"\n\n[config]\nkind = \"self-hosted\"\ncapacity = \"2\"\n\
         price_vcpu_second = \"0.000002\"\nprice_gib_second = \"0.0000005\"\n",
    )
    .unwrap();
    let rt = runtime(cache.path());
    let report = rt.load_dir(dir.path()).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let ids: Vec<&str> = report.loaded.iter().map(|e| e.id()).collect();
    assert_eq!(ids, ["local-pool", "saas-stub"]);
    let (pool, saas) = (&report.loaded[0], &report.loaded[1]);
    assert_eq!(rt.cache_stats().compiled, 1, "one component, compiled once");
    assert_eq!(pool.version_hash(), saas.version_hash());

    assert_eq!(pool.info().kind, Kind::SelfHosted);
    assert_eq!(saas.info().kind, Kind::Saas);
    assert_eq!(pool.capacity().unwrap().max_sandboxes, Some(2));
    assert_eq!(
        saas.capacity().unwrap().max_sandboxes,
        None,
        "saas-stub sees none of local-pool's config"
    );

    // 2 vCPU × 3600 s and 2 GiB × 3600 s at each price list.
    let pool_cost = pool.estimate_cost(&request()).unwrap().total.amount;
    let saas_cost = saas.estimate_cost(&request()).unwrap().total.amount;
    assert_eq!(
        pool_cost,
        Decimal::new(7200 * 20 + 7200 * 5, 7),
        "{pool_cost}"
    );
    assert_eq!(
        saas_cost,
        Decimal::new(7200 * 140 + 7200 * 45, 7),
        "{saas_cost}"
    );
}

#[test]
fn a_sidecar_with_an_unknown_key_is_skipped_naming_file_and_key() {
    let cache = tempfile::tempdir().unwrap();
    let dir = folder_with(&[(&saas_stub(), "saas-stub.wasm")]);
    std::fs::write(
        dir.path().join("pool.toml"),
        "component = \"saas-stub.wasm\"\ncapacty = 2\n",
    )
    .unwrap();
    let report = runtime(cache.path()).load_dir(dir.path()).unwrap();
    assert_eq!(
        report.loaded.iter().map(|e| e.id()).collect::<Vec<_>>(),
        ["saas-stub"]
    );
    let skipped = &report.skipped[0];
    assert!(skipped.file.ends_with("pool.toml"));
    assert!(
        skipped.reason.contains("line 2") && skipped.reason.contains("capacty"),
        "{}",
        skipped.reason
    );
}

#[test]
fn the_cli_lists_from_the_cache_on_the_second_run_and_checks_the_shipped_extensions() {
    let state = tempfile::tempdir().unwrap();
    let dir = folder_with(&[
        (&saas_stub(), "saas-stub.wasm"),
        (
            &built("tests/fixtures/extensions/local-pool.toml"),
            "local-pool.toml",
        ),
    ]);
    let artifact_of = |run: &str| {
        let out = sandboxer(state.path(), dir.path(), &["extensions", "list", "--json"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{run}: {stdout}{stderr}");
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let rows = json["extensions"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 2, "{stdout}");
        assert!(rows.iter().all(|r| r["status"] == "loaded"), "{stdout}");
        // Sorted by defining file: local-pool.toml first, so it is the one that compiles.
        assert_eq!(rows[0]["id"], "local-pool");
        assert_eq!(rows[1]["artifact"]["kind"], "shared", "{stdout}");
        (
            rows[0]["artifact"]["kind"].as_str().unwrap().to_owned(),
            json["cache"].clone(),
        )
    };
    let (first, stats) = artifact_of("first");
    assert_eq!(first, "compiled");
    assert_eq!(stats["compiled"], 1);
    let (second, stats) = artifact_of("second");
    assert_eq!(second, "cache");
    assert_eq!(stats["compiled"], 0);
    assert_eq!(stats["disk_hits"], 1);

    // `check` passes on saas-stub and on the shipped local-pool sidecar.
    for target in [
        dir.path().join("saas-stub.wasm"),
        dir.path().join("local-pool.toml"),
    ] {
        let out = sandboxer(
            state.path(),
            dir.path(),
            &["extensions", "check", target.to_str().unwrap(), "--json"],
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["passed"], true);
        let checks = report["checks"].as_array().unwrap();
        assert!(
            checks.len() >= 10 && checks.iter().all(|c| c["passed"] == true),
            "{stdout}"
        );
    }
    // `--config` reaches the component.
    let out = sandboxer(
        state.path(),
        dir.path(),
        &[
            "extensions",
            "check",
            dir.path().join("saas-stub.wasm").to_str().unwrap(),
            "--config",
            "capacity=7",
        ],
    );
    let (stdout, _) = text(&out);
    assert!(
        out.status.success() && stdout.contains("7 sandboxes"),
        "{stdout}"
    );
}

#[test]
fn prune_cache_deletes_only_what_no_current_component_can_use() {
    let state = tempfile::tempdir().unwrap();
    let dir = folder_with(&[(&saas_stub(), "saas-stub.wasm")]);
    let out = sandboxer(state.path(), dir.path(), &["extensions", "list"]);
    assert!(out.status.success());
    let cache = state.path().join("cache");
    let current = cache_files(&cache);
    assert_eq!(current.len(), 1, "{current:?}");
    let name = current[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (_, engine) = name.split_once('-').unwrap();
    // An older version of a component, an artifact of another engine, an interrupted
    // write an hour old, a fresh one (maybe another process writing now), and a file
    // that is not the cache's.
    let stale = cache.join(format!("{}-{engine}", "ab".repeat(32)));
    let other_engine = cache.join(format!(
        "{}-0123456789abcdef.cwasm",
        name.split_once('-').unwrap().0
    ));
    let old_tmp = cache.join(".tmp-old.cwasm");
    let new_tmp = cache.join(".tmp-new.cwasm");
    let foreign = cache.join("notes.txt");
    for f in [&stale, &other_engine, &old_tmp, &new_tmp, &foreign] {
        std::fs::write(f, vec![0u8; 1000]).unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old_tmp)
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    let out = sandboxer(
        state.path(),
        dir.path(),
        &["extensions", "prune-cache", "--dry-run"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("would delete 3 artifact(s)"), "{stdout}");
    assert!(stale.exists(), "a dry run deleted something");

    let out = sandboxer(
        state.path(),
        dir.path(),
        &["extensions", "prune-cache", "--json"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["kept"], 1, "{stdout}");
    assert_eq!(report["removed"].as_array().unwrap().len(), 3, "{stdout}");
    for gone in [&stale, &other_engine, &old_tmp] {
        assert!(!gone.exists(), "{} was kept", gone.display());
    }
    for kept in [&current[0], &new_tmp, &foreign] {
        assert!(kept.exists(), "{} was deleted", kept.display());
    }
    // The current component still loads from the cache, without compiling.
    let out = sandboxer(state.path(), dir.path(), &["extensions", "list", "--json"]);
    let (stdout, _) = text(&out);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["cache"]["compiled"], 0, "{stdout}");
    assert_eq!(json["cache"]["disk_hits"], 1, "{stdout}");
}
