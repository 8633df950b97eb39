//! The alerting examples under `deploy/` are valid and do what they say:
//! `promtool check rules` and `promtool test rules` on the rules (whose
//! unit tests fire and hold back every alert), `promtool check config` on
//! the example Prometheus configuration, `amtool check-config` on the
//! Alertmanager example, and every alert routed to the PagerDuty receiver
//! of its severity. Every alert has its runbook section in
//! `docs/operations.md`.
//!
//! promtool and amtool come from Debian's `prometheus` and
//! `prometheus-alertmanager` packages, which `scripts/test` installs. A
//! developer without them gets a note and a pass; under CI (`CI` set) a
//! missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use spindle_tests::root;

/// The tool's path, or `None` (with a note) where it is not installed and
/// this is not CI.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing: install Debian's {package} (scripts/test does)"
        );
        eprintln!("note: {name} is not installed (Debian's {package}); skipping its checks");
    }
    found
}

/// Runs `cmd` and returns its standard output, failing with everything it
/// printed unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn prometheus_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

/// Each alert of `alerts.yml` with its severity, read from the text (the
/// file is flat: `- alert:` starts a rule, its `severity:` follows).
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            out.push((name.to_owned(), None));
        } else if let Some(severity) = line.strip_prefix("severity: ") {
            let last = out.last_mut().expect("severity outside a rule");
            assert!(last.1.is_none(), "{}: two severities", last.0);
            last.1 = Some(severity.to_owned());
        }
    }
    out.into_iter()
        .map(|(name, severity)| {
            let severity = severity.unwrap_or_else(|| panic!("{name}: no severity"));
            (name, severity)
        })
        .collect()
}

#[test]
fn the_alerting_rules_are_valid_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let dir = prometheus_dir();
    let out = run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["check", "rules", "alerts.yml"]));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts().len())),
        "{out}"
    );
    run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["test", "rules", "alerts.test.yml"]));
}

/// The alerts, each fired by at least one unit test, with a
/// severity the Alertmanager example routes and a runbook section.
#[test]
fn every_alert_is_tested_routed_and_has_a_runbook() {
    let expected = [
        "SpindleDown",
        "SpindleBreakerOpen",
        "SpindleHighErrorRate",
        "SpindleWebhookRejectionsSpiking",
        "SpindleAuthenticationFailures",
        "SpindleApprovalsExpiringSoon",
        "SpindleNoWorkerReady",
        "SpindleTickNotRunning",
        "SpindleStoreDown",
    ];
    let alerts = alerts();
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected);
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(prometheus_dir().join("alerts.test.yml")).unwrap();
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for (name, severity) in &alerts {
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{name}: severity {severity}"
        );
        let anchor = name.to_lowercase();
        assert!(
            rules.contains(&format!("runbook: \"docs/operations.md#{anchor}\"")),
            "{name}: no runbook annotation"
        );
        assert!(
            operations.contains(&format!("\n### {name}\n")),
            "{name}: no runbook section in docs/operations.md"
        );
        let fired = format!("alertname: {name}\n        exp_alerts:\n          - exp_labels:");
        let aliased = tests
            .split("alertname: ")
            .any(|case| case.starts_with(&format!("{name}\n        exp_alerts: *")));
        assert!(
            tests.contains(&fired) || aliased,
            "{name}: no unit test fires it"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts: []")),
            "{name}: no unit test holds it back"
        );
    }
}

#[test]
fn the_example_prometheus_configuration_is_valid() {
    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    // promtool also checks that the files the configuration names exist:
    // point the scrape credential at one, next to copies of the files.
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("spindle-scrape-token");
    std::fs::write(&token, "spk_0123456789abcdef_example\n").unwrap();
    let config = std::fs::read_to_string(prometheus_dir().join("prometheus.yml")).unwrap();
    let named = "/etc/prometheus/secrets/spindle-scrape-token";
    assert!(config.contains(&format!("credentials_file: {named}")));
    assert!(
        config.contains("job_name: spindle"),
        "the job the rules name"
    );
    assert!(config.contains("metrics_path: /metrics"));
    std::fs::write(
        work.path().join("prometheus.yml"),
        config.replace(named, &token.display().to_string()),
    )
    .unwrap();
    copy(&prometheus_dir().join("alerts.yml"), work.path());
    let out = run(Command::new(&promtool).current_dir(work.path()).args([
        "check",
        "config",
        "prometheus.yml",
    ]));
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
}

#[test]
fn the_alertmanager_example_is_valid_and_routes_each_severity_to_pagerduty() {
    let Some(amtool) = tool("amtool", "prometheus-alertmanager") else {
        return;
    };
    let dir = root().join("deploy/alertmanager");
    let config = dir.join("alertmanager.yml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("pagerduty_configs:"));
    assert!(text.contains("routing_key_file:"));
    run(Command::new(&amtool)
        .current_dir(&dir)
        .arg("check-config")
        .arg(&config));
    let route = |labels: &[String]| {
        run(Command::new(&amtool)
            .current_dir(&dir)
            .arg("config")
            .arg("routes")
            .arg("test")
            .arg(format!("--config.file={}", config.display()))
            .args(labels))
        .trim()
        .to_owned()
    };
    for (name, severity) in alerts() {
        let labels = [
            format!("alertname={name}"),
            "service=spindle".to_owned(),
            format!("severity={severity}"),
        ];
        assert_eq!(
            route(&labels).lines().last().unwrap(),
            format!("spindle-{severity}"),
            "{name}"
        );
    }
    // Other alerts are left to the default receiver.
    let other = ["alertname=Other".to_owned(), "severity=critical".to_owned()];
    assert_eq!(route(&other).lines().last().unwrap(), "default");
}

fn copy(file: &Path, dir: &Path) {
    std::fs::copy(file, dir.join(file.file_name().unwrap())).unwrap();
}
