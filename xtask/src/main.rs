//! The workspace's task runner: `cargo xtask <task>`.
//!
//! ```text
//! cargo xtask test               every test of every crate (installs redis-server if it can)
//! cargo xtask proptest [--cases N]  the property tests (tests/model.rs of each crate, Pattern's, rule templates')
//! cargo xtask lint               rustfmt --check, clippy and rustdoc with warnings denied
//! cargo xtask bench              every benchmark; results to target/bench/summary.json and docs/benchmarks.md
//! cargo xtask report             docs/benchmarks.md again from the last target/bench/summary.json
//! cargo xtask deny               cargo-deny: bans, licenses, sources (installs cargo-deny)
//! cargo xtask msrv               `cargo check` with the workspace's rust-version (installs it with rustup if it can)
//! cargo xtask ci                 what CI runs: lint, msrv, test, proptest, the examples, deny
//! ```
//!
//! Every cargo build, test, clippy, doc and run step passes `--locked`, and
//! the `cargo xtask` alias runs the xtask itself with `--locked`: a stale
//! `Cargo.lock` fails the task instead of being rewritten.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod report;

type Result<T = ()> = std::result::Result<T, String>;

const USAGE: &str =
    "usage: cargo xtask <test | proptest [--cases N] | lint | bench | report | deny | msrv | ci>";

/// Property-test cases per test in `cargo xtask ci`.
const CI_PROPTEST_CASES: u32 = 5000;

/// How long `cargo xtask msrv` lets `rustup toolchain install` run (about
/// 15 s with a network) before it gives up and skips the check.
const MSRV_INSTALL_TIMEOUT: Duration = Duration::from_secs(180);

/// Cargo subcommands that take `--locked`; every call of them gets it.
const LOCKED_SUBCOMMANDS: &[&str] = &["bench", "build", "check", "clippy", "doc", "run", "test"];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("proptest") => cases(&args[1..]).and_then(proptest),
        Some("lint") => lint(),
        Some("bench") => bench(),
        Some("report") => report(),
        Some("deny") => deny(),
        Some("msrv") => msrv(),
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
    // What a user who enables no feature builds: cfg'd-out code paths (no
    // lz4, no JSON, no conformance suite) must build, and the unit tests
    // that only exist without a feature must pass. The integration tests
    // are checked, not run a second time: linking every one of them again
    // would cost a third of a CI run.
    cargo(&["test", "--workspace", "--lib"])?;
    cargo(&["check", "--workspace", "--tests", "--examples"])
}

/// Runs the examples that finish by themselves (not the `graphql` server:
/// its tests start it), built as the tests were (same profile, same
/// features), so that nothing is compiled a second time: `cargo run`
/// would rebuild the whole tree with the dev profile.
fn examples() -> Result {
    let root = root();
    cargo(&[
        "build",
        "--workspace",
        "--all-features",
        "--profile",
        "test",
        "--examples",
    ])?;
    // The `test` profile builds into `debug/`.
    let dir = target_dir(&root).join("debug").join("examples");
    for example in ["quickstart", "offers", "metrics", "warming", "config"] {
        run(Command::new(dir.join(example)).current_dir(&root))?;
    }
    Ok(())
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
    // The crates' benchmarks, then the load test of the GraphQL example.
    let mut packages = crates(&root)?;
    packages.push(root.join("examples"));
    for krate in packages {
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
    let summary = summarize(&out_dir)?;
    report::write(&root, &summary, std::time::SystemTime::now())
}

/// `docs/benchmarks.md` from the results of the last `cargo xtask bench`.
fn report() -> Result {
    let root = root();
    let path = target_dir(&root).join("bench").join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|error| {
        format!(
            "no benchmark results at {} (run `cargo xtask bench` first): {error}",
            path.display()
        )
    })?;
    let summary =
        serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    // The time of the run, not of this call.
    let run = std::fs::metadata(&path)
        .and_then(|metadata| metadata.modified())
        .map_err(|error| format!("{}: {error}", path.display()))?;
    report::write(&root, &summary, run)
}

/// Merges every `target/bench/*.json` the benchmarks wrote into `summary.json`.
fn summarize(out_dir: &Path) -> Result<serde_json::Value> {
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
    Ok(summary)
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

/// Checks the workspace with the oldest Rust it declares (`rust-version`
/// in `[workspace.package]`), so that the README's "1.88 or newer" stays
/// true. Skipped, with a warning, when rustup is missing or cannot install
/// that toolchain (no network): a machine without it proves nothing either way.
fn msrv() -> Result {
    let started = Instant::now();
    let root = root();
    let msrv = rust_version(&root)?;
    if !which("rustup") {
        warn_msrv_skipped(&msrv, "rustup is not installed");
        return Ok(());
    }
    let toolchain = match installed_toolchain(&msrv)? {
        Some(toolchain) => toolchain,
        None => {
            eprintln!(
                "xtask: installing Rust {msrv} (rust-version) with rustup, \
                 at most {MSRV_INSTALL_TIMEOUT:?}"
            );
            let mut install = Command::new("rustup");
            install.args(["toolchain", "install", &msrv, "--profile", "minimal"]);
            if let Err(error) = run_with_timeout(&mut install, MSRV_INSTALL_TIMEOUT) {
                warn_msrv_skipped(&msrv, &format!("rustup could not install it: {error}"));
                return Ok(());
            }
            match installed_toolchain(&msrv)? {
                Some(toolchain) => toolchain,
                None => {
                    warn_msrv_skipped(&msrv, "rustup installed it but does not list it");
                    return Ok(());
                }
            }
        }
    };
    // `rustup run` picks the toolchain itself; the variables that cargo
    // set for this xtask would point the check at the current one.
    let mut check = Command::new("rustup");
    check
        .args(["run", &toolchain, "cargo", "check"])
        // The crates themselves (libraries and binaries): what a user builds
        // with the old toolchain. Tests and benches, with their heavier
        // dev-dependencies, would triple the check's time on a fresh clone.
        .args(["--workspace", "--locked"])
        .current_dir(&root)
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN");
    run(&mut check).map_err(|error| {
        format!(
            "{error}\nthe workspace declares rust-version = \"{msrv}\" but does not build \
             with it: raise rust-version (and the README's \"{msrv} or newer\") or avoid \
             the newer feature"
        )
    })?;
    eprintln!(
        "xtask: the workspace builds with Rust {msrv} ({toolchain}); the MSRV check took {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn warn_msrv_skipped(msrv: &str, why: &str) {
    eprintln!(
        "xtask: WARNING: MSRV check SKIPPED: {why}. Nothing checked that the workspace \
         builds with Rust {msrv} (its rust-version); run `rustup toolchain install {msrv} \
         --profile minimal` and `cargo xtask msrv` where the network is available."
    );
}

/// `rust-version` of `[workspace.package]` in the root Cargo.toml.
fn rust_version(root: &Path) -> Result<String> {
    let path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[workspace.package]"
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "rust-version"
        {
            return Ok(value.trim().trim_matches('"').to_owned());
        }
    }
    Err(format!(
        "{} has no rust-version in [workspace.package]",
        path.display()
    ))
}

/// The name rustup lists for an installed toolchain of Rust `version`
/// (`1.88` matches `1.88-<host>` and `1.88.0-<host>`), if there is one.
fn installed_toolchain(version: &str) -> Result<Option<String>> {
    let output = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|error| format!("cannot run rustup toolchain list: {error}"))?;
    let list = String::from_utf8_lossy(&output.stdout);
    let names = [format!("{version}-"), format!("{version}.0-")];
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| {
            *name == version || names.iter().any(|prefix| name.starts_with(prefix.as_str()))
        })
        .map(str::to_owned))
}

/// Runs `command`, killing it if it is still running after `timeout`.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result {
    eprintln!("xtask: running {command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot start {command:?}: {error}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{command:?} failed ({status})")),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} still running after {timeout:?}"));
            }
            Err(error) => return Err(format!("waiting for {command:?}: {error}")),
        }
    }
}

fn ci() -> Result {
    let started = Instant::now();
    lint()?;
    msrv()?;
    test()?;
    proptest(CI_PROPTEST_CASES)?;
    examples()?;
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
    match args.split_first() {
        Some((subcommand, rest)) if LOCKED_SUBCOMMANDS.contains(subcommand) => {
            command.arg(subcommand).arg("--locked").args(rest)
        }
        _ => command.args(args),
    };
    command.current_dir(root());
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
