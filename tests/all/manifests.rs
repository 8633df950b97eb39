use spindle_tests::{HostBuilder, expand, root};

#[test]
fn every_bad_manifest_stops_start_up_with_a_clear_message() {
    let dir = root().join("tests/scenarios/bad-manifests");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "scenario folders missing under {}",
        dir.display()
    );
    for case in cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        let expected = expected.trim();
        let work = tempfile::tempdir().unwrap();
        let manifest = work.path().join("spin.toml");
        std::fs::write(
            &manifest,
            expand(&std::fs::read_to_string(case.join("spin.toml")).unwrap()),
        )
        .unwrap();
        let state = work.path().join("state");
        let err = match HostBuilder::new(&manifest).state_dir(&state).try_start() {
            Ok(_) => panic!("{name}: host started on a bad manifest"),
            Err(stderr) => stderr,
        };
        assert!(
            err.contains(expected),
            "{name}: expected {expected:?} in:\n{err}"
        );
        // Nothing half-started: no store was created.
        assert!(
            !state.join("sqlite_key_value.db").exists(),
            "{name}: store created"
        );
    }
}
