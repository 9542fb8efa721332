//! Config files end to end: every example in `config/` loads through `Config::load`, and a broken
//! file reports all of its errors, each prefixed `file:line: path`.

use std::path::{Path, PathBuf};

use weir::config::Config;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn every_file_in_config_loads() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(config_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let config = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => panic!("{} does not load:\n{e}", path.display()),
        };
        let back = Config::from_toml(&config.to_toml(), "effective.toml").unwrap();
        assert_eq!(back, config, "{} does not round-trip", path.display());
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    for expected in [
        "default.toml",
        "edge.toml",
        "full.toml",
        "loadtest.toml",
        "sidecar.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "config/{expected} is missing: {names:?}"
        );
    }
}

#[test]
fn the_embedded_default_is_config_default_toml() {
    let on_disk = Config::load(&config_dir().join("default.toml")).unwrap();
    assert_eq!(Config::embedded_default(), on_disk);
}

#[test]
fn a_broken_file_reports_every_error_with_file_line_and_path() {
    let dir = std::env::temp_dir().join(format!("weir-it-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    let text = [
        "[[listeners]]",                      // 1
        "listen = \"localhost:8080\"",        // 2
        "max_connections = 0",                // 3
        "[[routes]]",                         // 4
        "upstream = \"missing\"",             // 5
        "timeout = \"fast\"",                 // 6
        "match = { methods = [\"GET\", 1] }", // 7
        "[upstreams.backend]",                // 8
        "endpoints = [\"10.0.0.1:80\"]",      // 9
        "[upstreams.backend.retrys]",         // 10
        "[upstreams.backend.retry]",          // 11
        "budget_ratio = 1.5",                 // 12
    ]
    .join("\n");
    std::fs::write(&path, text).unwrap();

    let errors = Config::load(&path).unwrap_err();
    let file = path.display().to_string();
    let prefixes: Vec<String> = errors
        .0
        .iter()
        .map(|e| format!("{}:{}: {}", e.file, e.line, e.path))
        .collect();
    let expected = [
        format!("{file}:2: listeners[0].listen"),
        format!("{file}:3: listeners[0].max_connections"),
        format!("{file}:5: routes[0].upstream"),
        format!("{file}:6: routes[0].timeout"),
        format!("{file}:7: routes[0].match.methods[1]"),
        format!("{file}:10: upstreams.backend.retrys"),
        format!("{file}:12: upstreams.backend.retry.budget_ratio"),
    ];
    assert_eq!(prefixes, expected);

    let report = errors.to_string();
    assert_eq!(report.lines().count(), expected.len());
    assert!(report.contains(&format!(
        "{file}:6: routes[0].timeout: expected a duration such as \"250ms\" (got \"fast\")"
    )));
    assert!(
        report.contains("retrys: unknown key (expected one of: "),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_one_error_naming_it() {
    let path = config_dir().join("no-such-file.toml");
    let errors = Config::load(&path).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].file, path.display().to_string());
    assert!(
        errors
            .to_string()
            .starts_with(&format!("{}: ", path.display()))
    );
}
