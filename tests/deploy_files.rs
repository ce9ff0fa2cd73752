//! The deployment files stay valid and agree with the tree: the systemd units load and keep their
//! hardening score, the Yocto crates list matches Cargo.lock, the recipe installs files that exist,
//! and the kas files are well-formed kas projects.
//!
//! Tests that need `systemd-analyze` skip (a SKIP line; a failure under CI=true, where dev.sh
//! installs it) where it is not installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{skip, TempDir};

const SERVICE: &str = "systemd/beltcam.service";
const SOCKET: &str = "systemd/beltcam.socket";
const RECIPE_DIR: &str = "yocto/meta-beltcam/recipes-multimedia/beltcam";
const RECIPE: &str = "yocto/meta-beltcam/recipes-multimedia/beltcam/beltcam_0.1.0.bb";
const CRATES_INC: &str = "yocto/meta-beltcam/recipes-multimedia/beltcam/beltcam-crates.inc";
const LAYER: &str = "yocto/meta-beltcam";
const KAS_DIR: &str = "yocto/kas";
/// `systemd-analyze security` prints exposure 0.0..=10.0; the issue asks for "OK" or better.
const MAX_EXPOSURE: f64 = 2.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `systemd-analyze ARGS` for `test`, or returns None (after a SKIP) when it is not installed.
fn systemd_analyze(test: &str, args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(
                test,
                "systemd-analyze is not installed (Debian: apt-get install systemd)",
                &[],
            );
            None
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// systemd units

#[test]
fn units_pass_systemd_analyze_verify() {
    // `verify` insists that ExecStart's binary exists and is executable. /usr/bin/beltcam exists only
    // on the box, so verify a copy whose ExecStart points at the binary cargo built for this test run;
    // everything else is byte for byte the committed unit.
    let tmp = TempDir::new("verify");
    let service = read(SERVICE);
    assert!(
        service.contains("ExecStart=/usr/bin/beltcam "),
        "ExecStart no longer runs /usr/bin/beltcam"
    );
    let service = service.replace(
        "ExecStart=/usr/bin/beltcam ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_beltcam")),
    );
    let svc = tmp.0.join("beltcam.service");
    let sock = tmp.0.join("beltcam.socket");
    fs::write(&svc, service).unwrap();
    fs::write(&sock, read(SOCKET)).unwrap();

    let Some(out) = systemd_analyze(
        "units_pass_systemd_analyze_verify",
        &["verify", svc.to_str().unwrap(), sock.to_str().unwrap()],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and misplaced settings are only warnings (exit 0); they are mistakes all the same.
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains("beltcam.s")).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn service_exposure_is_ok_or_better() {
    let unit = repo().join(SERVICE);
    // --threshold is on the 0..100 scale: exit status fails above 2.0. The score is parsed as well so a
    // failure names it.
    let threshold = format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32);
    let Some(out) = systemd_analyze(
        "service_exposure_is_ok_or_better",
        &[
            "security",
            "--offline=yes",
            &threshold,
            unit.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!("no exposure line in systemd-analyze output:\n{stdout}\n{stderr}")
        });
    // "→ Overall exposure level for beltcam.service: 1.4 OK 🙂"
    let score: f64 = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse exposure from {line:?}"));
    eprintln!(
        "systemd-analyze security: {}",
        line.trim_start_matches(|c: char| !c.is_ascii_alphabetic())
    );
    let worst: Vec<&str> = stdout.lines().filter(|l| l.starts_with('✗')).collect();
    assert!(
        score <= MAX_EXPOSURE && out.status.success(),
        "exposure {score} > {MAX_EXPOSURE} (exit {}); open items:\n{}",
        out.status,
        worst.join("\n")
    );
}

#[test]
fn unit_syscall_filter_lets_io_uring_through() {
    // The unit's own filter: an allow-list holding io_uring (directly, via @aio, or via
    // @system-service, which contains @aio), and no deny-list that takes it away again. Where the
    // host's systemd is older than 252 its @aio lacks io_uring and the daemon falls back to epoll;
    // that is the host's business, not the project's, so it is not checked here.
    let service = read(SERVICE);
    let filters: Vec<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    assert!(!filters.is_empty(), "{SERVICE} has no SystemCallFilter=");
    let io_uring = |w: &str| w == "@aio" || w.starts_with("io_uring");
    let allows = filters
        .iter()
        .filter(|f| !f.starts_with('~'))
        .flat_map(|f| f.split_whitespace())
        .any(|w| io_uring(w) || w == "@system-service");
    assert!(
        allows,
        "{SERVICE}: no allow-list entry lets io_uring through: {filters:?}"
    );
    for deny in filters.iter().filter_map(|f| f.strip_prefix('~')) {
        let words: Vec<&str> = deny.split_whitespace().collect();
        assert!(
            !words.iter().any(|w| io_uring(w) || *w == "@system-service"),
            "{SERVICE}: SystemCallFilter=~{deny} refuses io_uring"
        );
    }
    // The group this relies on is named the way systemd spells it (a typo would be ignored with
    // a warning, and the daemon would quietly run on epoll).
    assert!(filters.contains(&"@system-service"), "{filters:?}");
}

#[test]
fn service_keeps_what_the_daemon_needs() {
    // Hardening that would break the daemon, caught before it reaches a box.
    let unit = read(SERVICE);
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |line: &str| settings.contains(&line);
    for required in [
        "Type=notify",
        "NotifyAccess=main",
        "DeviceAllow=char-video4linux rw",
        "SupplementaryGroups=video",
        "SystemCallFilter=@system-service",
        "StateDirectory=beltcam",
        "ConfigurationDirectory=beltcam",
        "ExecStart=/usr/bin/beltcam --config /etc/beltcam/beltcam.toml",
    ] {
        assert!(has(required), "{SERVICE} lost `{required}`");
    }
    assert!(
        settings.iter().any(|l| l.starts_with("WatchdogSec=")),
        "{SERVICE} lost WatchdogSec="
    );
    // A private /dev has no /dev/video*.
    assert!(
        !has("PrivateDevices=yes") && !has("PrivateDevices=true"),
        "PrivateDevices= hides the cameras"
    );
    // The daemon must bind TCP; an allow-list without INET would silently fall back to nothing.
    let families = settings
        .iter()
        .find(|l| l.starts_with("RestrictAddressFamilies="))
        .expect("RestrictAddressFamilies=");
    assert!(
        families.contains("AF_INET")
            && families.contains("AF_INET6")
            && families.contains("AF_UNIX"),
        "{families}"
    );
    // Socket activation is optional, never a hard dependency.
    assert!(!settings
        .iter()
        .any(|l| l.starts_with("Requires=") && l.contains("beltcam.socket")));

    let socket = read(SOCKET);
    assert!(
        socket
            .lines()
            .any(|l| l.trim() == "Service=beltcam.service"),
        "{SOCKET} must name beltcam.service"
    );
}

// ---------------------------------------------------------------------------------------------
// Yocto: crates list, recipe, layer

/// The text `cargo-update-recipe-crates` (and scripts/gen-crates-inc.py) generate from Cargo.lock.
fn crates_inc_from_lock(lock_text: &str) -> String {
    let lock: toml::Table = toml::from_str(lock_text).expect("Cargo.lock is not TOML");
    let packages = lock
        .get("package")
        .and_then(|p| p.as_array())
        .expect("Cargo.lock has no [[package]]");
    let field = |p: &toml::Value, key: &str| p.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    // Workspace members have no `source`; git dependencies would not say crates.io.
    let crates: Vec<&toml::Value> = packages
        .iter()
        .filter(|p| field(p, "source").is_some_and(|s| s.contains("crates.io")))
        .collect();
    let mut out = String::from(
        "# Autogenerated with 'bitbake -c update_crates beltcam'\n\n# from Cargo.lock\n",
    );
    out.push_str("SRC_URI += \" \\\n");
    for c in &crates {
        out.push_str(&format!(
            "    crate://crates.io/{}/{} \\\n",
            field(c, "name").unwrap(),
            field(c, "version").unwrap()
        ));
    }
    out.push_str("\"\n\n");
    for c in &crates {
        if let Some(sum) = field(c, "checksum") {
            out.push_str(&format!(
                "SRC_URI[{}-{}.sha256sum] = \"{sum}\"\n",
                field(c, "name").unwrap(),
                field(c, "version").unwrap()
            ));
        }
    }
    out
}

#[test]
fn crates_inc_matches_cargo_lock() {
    let expected = crates_inc_from_lock(&read("Cargo.lock"));
    let committed = read(CRATES_INC);
    if committed == expected {
        return;
    }
    let (mut exp, mut got) = (expected.lines(), committed.lines());
    let mut n = 1;
    loop {
        match (exp.next(), got.next()) {
            (Some(e), Some(g)) if e == g => n += 1,
            (e, g) => panic!(
                "{CRATES_INC} is out of date with Cargo.lock (first difference at line {n}):\n  \
                 expected: {}\n  committed: {}\nRun scripts/gen-crates-inc.py and commit the result.",
                e.unwrap_or("<end of file>"),
                g.unwrap_or("<end of file>")
            ),
        }
    }
}

#[test]
fn recipe_installs_files_that_exist() {
    let recipe = read(RECIPE);
    // Every ${S}/path the recipe installs from the source tree.
    let paths: Vec<&str> = recipe
        .split("${S}/")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| c.is_whitespace() || c == '"' || c == ';')
                .next()
                .unwrap()
        })
        .collect();
    for needed in [
        "systemd/beltcam.service",
        "systemd/beltcam.socket",
        "config/beltcam.example.toml",
    ] {
        assert!(
            paths.contains(&needed),
            "{RECIPE} no longer installs {needed}"
        );
    }
    for p in &paths {
        assert!(
            repo().join(p).is_file(),
            "{RECIPE} installs ${{S}}/{p}, which does not exist"
        );
    }
    // `require X` is resolved next to the recipe.
    for line in recipe.lines().filter(|l| l.starts_with("require ")) {
        let inc = line["require ".len()..].trim();
        assert!(
            repo().join(RECIPE_DIR).join(inc).is_file(),
            "{RECIPE}: {line}: no such file"
        );
    }
    // Every unit the systemd class enables is one the recipe installs.
    let units = recipe
        .lines()
        .find_map(|l| l.strip_prefix("SYSTEMD_SERVICE:${PN} = "))
        .expect("SYSTEMD_SERVICE:${PN}")
        .trim_matches('"');
    for unit in units.split_whitespace() {
        assert!(
            paths.contains(&format!("systemd/{unit}").as_str()),
            "{unit} is enabled but not installed"
        );
    }
    // The unit reads the config where the recipe puts it, and runs the binary cargo builds.
    assert!(recipe.contains("${D}${sysconfdir}/beltcam/beltcam.toml"));
    assert!(read(SERVICE).contains("--config /etc/beltcam/beltcam.toml"));
    // cargo_do_install installs the root package's binary under its package name (no [[bin]]
    // renames it), and that is what ExecStart runs and the recipe's sed rewrites.
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let pkg = manifest["package"]["name"].as_str().expect("package.name");
    assert!(
        manifest.get("bin").is_none(),
        "a [[bin]] section would change the installed binary's name"
    );
    assert!(
        read(SERVICE)
            .lines()
            .any(|l| l.starts_with(&format!("ExecStart=/usr/bin/{pkg} "))),
        "{SERVICE}: ExecStart does not run /usr/bin/{pkg}"
    );
    assert!(
        recipe.contains(&format!("s#/usr/bin/{pkg}#${{bindir}}/{pkg}#g")),
        "{RECIPE}: the unit's /usr/bin/{pkg} is not rewritten to ${{bindir}}"
    );
    for class in ["cargo", "cargo-update-recipe-crates", "systemd", "useradd"] {
        assert!(
            recipe
                .lines()
                .any(|l| l.starts_with("inherit ") && l.split_whitespace().any(|w| w == class)),
            "{RECIPE} must inherit {class}"
        );
    }
}

#[test]
fn layer_conf_declares_series_and_dependencies() {
    let conf = read(&format!("{LAYER}/conf/layer.conf"));
    let compat = conf
        .lines()
        .find_map(|l| l.strip_prefix("LAYERSERIES_COMPAT_beltcam = "))
        .expect("LAYERSERIES_COMPAT_beltcam");
    // The two LTS lines scripts/yocto-check.sh runs a real bitbake on.
    for series in ["wrynose", "scarthgap"] {
        assert!(
            compat.contains(series),
            "layer not marked compatible with {series}"
        );
    }
    let deps = conf
        .lines()
        .find(|l| l.starts_with("LAYERDEPENDS_beltcam"))
        .expect("LAYERDEPENDS_beltcam");
    // scarthgap: clang-native from meta-clang, rustc 1.81 from meta-lts-mixins.
    assert!(
        deps.contains("core")
            && deps.contains("clang-layer")
            && deps.contains("scarthgap-rust-mixin"),
        "{deps}"
    );
    assert!(repo().join(LAYER).join("README.md").is_file());
}

/// A floating revision makes bitbake run `git ls-remote` at parse time, which stops every bitbake
/// command with the network off: the recipe pins a full commit, and nothing in the layer floats.
#[test]
fn recipe_pins_its_source() {
    let recipe = read(RECIPE);
    let srcrev = recipe
        .lines()
        .find_map(|l| l.strip_prefix("SRCREV = "))
        .expect("SRCREV = \"<commit>\" (a plain assignment, not ?=)")
        .trim_matches('"');
    assert!(
        srcrev.len() == 40 && srcrev.bytes().all(|b| b.is_ascii_hexdigit()),
        "SRCREV must be a full commit id, not {srcrev:?}"
    );
    let mut stack = vec![repo().join("yocto")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = fs::read_to_string(&path) {
                assert!(!text.contains("AUTOREV"), "{}: AUTOREV", path.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// kas

#[test]
fn kas_files_are_complete_kas_projects() {
    let dir = repo().join(KAS_DIR);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .filter(|p| !p.to_string_lossy().ends_with(".lock.yml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "raspberrypi4-64.yml",
        "jetson-orin-nano-devkit.yml",
        "raspberrypi4-64-scarthgap.yml",
        "jetson-orin-nano-devkit-scarthgap.yml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{KAS_DIR}/{wanted} is missing"
        );
    }
    for file in &files {
        check_kas_file(file);
    }
}

/// Parses a YAML file (with a real YAML parser, in process) into a JSON value.
fn yaml_as_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("kas file readable");
    match serde_yaml_ng::from_str::<serde_json::Value>(&text) {
        Ok(v) => Some(v),
        Err(e) => panic!("{}: not valid YAML: {e}", path.display()),
    }
}

/// kas's merge: maps merge key by key, anything else is replaced by the later value.
fn merge_json(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) if old.is_object() && v.is_object() => merge_json(old, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (into, from) => *into = from,
    }
}

/// A kas file with its `header.includes` (paths relative to the repository root) merged in first.
fn kas_resolved(path: &Path) -> serde_json::Value {
    let doc = yaml_as_json(path).expect("kas file");
    let mut out = serde_json::json!({});
    let includes = doc
        .get("header")
        .and_then(|h| h.get("includes"))
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for inc in includes {
        let inc = inc.as_str().expect("local include given as a path");
        let inc_path = repo().join(inc);
        assert!(
            inc_path.is_file(),
            "{}: include {inc} missing",
            path.display()
        );
        merge_json(&mut out, kas_resolved(&inc_path));
    }
    merge_json(&mut out, doc);
    out
}

fn check_kas_file(path: &Path) {
    use serde_json::Value;
    let name = path.display().to_string();
    let doc = kas_resolved(path);
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);

    // `branch:` in repos needs format version 14 (kas 4.0).
    let version = doc
        .get("header")
        .and_then(|h| h.get("version"))
        .and_then(Value::as_u64);
    assert!(
        version.is_some_and(|v| v >= 14),
        "{name}: header.version must be an integer >= 14"
    );
    for key in ["machine", "distro"] {
        assert!(
            str_at(&doc, key).is_some_and(|s| !s.is_empty()),
            "{name}: `{key}` missing"
        );
    }
    let target = doc.get("target").expect("target");
    assert!(
        target.as_str().is_some() || target.as_array().is_some_and(|s| !s.is_empty()),
        "{name}: `target` must be a name or a list"
    );

    let repos = doc
        .get("repos")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{name}: no repos"));
    let default_branch = doc
        .get("defaults")
        .and_then(|d| d.get("repos"))
        .and_then(|r| str_at(r, "branch"));
    let mut own_layer = false;
    for (id, repo_def) in repos {
        match str_at(repo_def, "url") {
            Some(_) => {
                let pinned = ["branch", "commit", "tag"]
                    .iter()
                    .any(|k| str_at(repo_def, k).is_some());
                assert!(
                    pinned || default_branch.is_some(),
                    "{name}: repo {id} has a url but no branch/commit/tag"
                );
            }
            None => {
                // No url and no path: the repository holding this file. Its layers must exist here.
                let layers = repo_def
                    .get("layers")
                    .and_then(Value::as_object)
                    .expect("local repo lists layers");
                for layer in layers.keys() {
                    assert!(
                        repo().join(layer).join("conf/layer.conf").is_file(),
                        "{name}: layer {layer} has no conf/layer.conf"
                    );
                    own_layer |= layer == LAYER;
                }
            }
        }
    }
    assert!(own_layer, "{name}: does not add {LAYER}");
    // No poky from wrynose on: bitbake, openembedded-core and meta-yocto, on both releases.
    let mut needed = vec!["bitbake", "openembedded-core", "meta-yocto"];
    if name.ends_with("-scarthgap.yml") {
        needed.extend(["meta-clang", "meta-lts-mixins"]);
    }
    for needed in needed {
        assert!(repos.contains_key(needed), "{name}: repo {needed} missing");
    }

    // Every remote repository is pinned by the kas lock file next to the file.
    let lock_path = path.with_file_name(format!(
        "{}.lock.yml",
        path.file_stem().unwrap().to_string_lossy()
    ));
    assert!(
        lock_path.is_file(),
        "{name}: no lock file {}",
        lock_path.display()
    );
    let lock = yaml_as_json(&lock_path).expect("lock file");
    let locked = lock
        .get("overrides")
        .and_then(|o| o.get("repos"))
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{}: no overrides.repos", lock_path.display()));
    for (id, repo_def) in repos {
        if str_at(repo_def, "url").is_none() {
            continue;
        }
        let commit = locked
            .get(id)
            .and_then(|r| str_at(r, "commit"))
            .unwrap_or_else(|| panic!("{}: repo {id} not pinned", lock_path.display()));
        assert!(
            commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: {id}: {commit:?} is not a full commit id",
            lock_path.display()
        );
    }

    let local_conf: String = doc
        .get("local_conf_header")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        local_conf
            .lines()
            .any(|l| l.trim() == "INIT_MANAGER = \"systemd\""),
        "{name}: local_conf_header must set INIT_MANAGER = \"systemd\""
    );
}
