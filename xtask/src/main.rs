//! The workspace's task runner: `cargo xtask <task>`.
//!
//! ```text
//! cargo xtask test               every test of every crate (installs redis-server if it can)
//! cargo xtask proptest [--cases N]  the property tests (tests/model.rs of each crate, Pattern's, rule templates')
//! cargo xtask lint               rustfmt --check, clippy and rustdoc with warnings denied
//! cargo xtask bench              the criterion benchmarks; ratios to target/bench/summary.json
//! cargo xtask deny               cargo-deny: bans, licenses, sources (installs cargo-deny)
//! cargo xtask ci                 what CI runs: lint, test, proptest, the examples, deny
//! ```

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str = "usage: cargo xtask <test | proptest [--cases N] | lint | bench | deny | ci>";

/// Property-test cases per test in `cargo xtask ci`.
const CI_PROPTEST_CASES: u32 = 5000;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("proptest") => cases(&args[1..]).and_then(proptest),
        Some("lint") => lint(),
        Some("bench") => bench(),
        Some("deny") => deny(),
        Some("ci") => ci(),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn cases(args: &[String]) -> Result<u32> {
    match args {
        [] => Ok(256),
        [flag, n] if flag == "--cases" => n
            .parse()
            .map_err(|_| format!("--cases takes a whole number, not {n:?}")),
        _ => Err(USAGE.to_owned()),
    }
}

fn test() -> Result {
    ensure_redis()?;
    cargo(&["test", "--workspace", "--all-features"])?;
    // What a user who enables no feature builds: cfg'd-out code paths
    // (no lz4, no JSON, no conformance suite) must build and pass too.
    cargo(&["test", "--workspace"])
}

fn proptest(cases: u32) -> Result {
    let cases = cases.to_string();
    let vars = [("PROPTEST_CASES", cases.as_str())];
    // The same packages and features as `test`, so the build is reused.
    // Pattern's and the rule templates' property tests live beside their
    // matchers...
    cargo_env(
        &[
            "test",
            "--workspace",
            "--all-features",
            "--lib",
            "--",
            "pattern::",
            "template::",
        ],
        &vars,
    )?;
    // ...and every crate's model-based tests in tests/model.rs.
    cargo_env(
        &["test", "--workspace", "--all-features", "--test", "model"],
        &vars,
    )
}

fn lint() -> Result {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ])?;
    // Broken intra-doc links and malformed doc comments fail too.
    cargo_env(
        &["doc", "--workspace", "--no-deps", "--all-features"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}

fn bench() -> Result {
    ensure_redis()?;
    let root = root();
    let out_dir = target_dir(&root).join("bench");
    // Stale results from an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&out_dir);
    for krate in crates(&root)? {
        let benches = krate.join("benches");
        let Ok(entries) = std::fs::read_dir(&benches) else {
            continue;
        };
        let package = krate.file_name().unwrap().to_string_lossy().into_owned();
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
            .filter_map(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in names {
            cargo(&["bench", "-p", &package, "--bench", &name])?;
        }
    }
    summarize(&out_dir)
}

/// Merges every `target/bench/*.json` the benchmarks wrote into `summary.json`.
fn summarize(out_dir: &Path) -> Result {
    let mut summary = serde_json::Map::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .map_err(|error| format!("no benchmark results in {}: {error}", out_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| path.file_stem().is_some_and(|stem| stem != "summary"))
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).map_err(|error| error.to_string())?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        summary.insert(name, value);
    }
    let summary = serde_json::Value::Object(summary);
    let pretty = serde_json::to_string_pretty(&summary).map_err(|error| error.to_string())?;
    let path = out_dir.join("summary.json");
    std::fs::write(&path, &pretty).map_err(|error| error.to_string())?;
    println!("{pretty}\nwritten to {}", path.display());
    Ok(())
}

fn deny() -> Result {
    let installed = Command::new("cargo")
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !installed {
        cargo(&["install", "cargo-deny", "--locked"])?;
    }
    // `advisories` needs the advisory database from the network; the rest
    // works offline.
    cargo(&["deny", "check", "bans", "licenses", "sources"])
}

fn ci() -> Result {
    let started = Instant::now();
    lint()?;
    test()?;
    proptest(CI_PROPTEST_CASES)?;
    for example in ["quickstart", "offers"] {
        cargo(&["run", "-p", "examples", "--example", example])?;
    }
    deny()?;
    println!("xtask ci: everything passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Tests that involve Redis start real `redis-server` processes.
fn ensure_redis() -> Result {
    if which("redis-server") && which("redis-cli") {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0"));
    if is_root && which("apt-get") {
        eprintln!("xtask: installing redis-server (the Redis tests start real servers)");
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "redis-server"]))?;
        return Ok(());
    }
    Err(
        "redis-server and redis-cli are needed by the Redis tests; install them \
         (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`)"
            .to_owned(),
    )
}

fn which(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn cargo(args: &[&str]) -> Result {
    cargo_env(args, &[])
}

fn cargo_env(args: &[&str], vars: &[(&str, &str)]) -> Result {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(root());
    for (key, value) in vars {
        command.env(key, value);
    }
    run(&mut command)
}

fn run(command: &mut Command) -> Result {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .map_err(|error| format!("cannot start {command:?}: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn crates(root: &Path) -> Result<Vec<PathBuf>> {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map_err(|error| format!("cannot list crates/: {error}"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    Ok(crates)
}
