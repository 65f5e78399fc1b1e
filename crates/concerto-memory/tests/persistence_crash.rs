//! Crash loop: a child process saves a large hashmap in a tight loop and is killed (SIGKILL
//! on Unix) at random moments; the file must always be a complete snapshot.
//!
//! The parent test re-runs this test binary with only [`crash_child`] selected and
//! `CONCERTO_CRASH_CHILD=<dir>` set. Without that variable `crash_child` returns at once, so
//! it passes in ordinary runs.

use concerto_vm::host::MapId;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use concerto_memory::{InMemoryStore, temp_files};
use concerto_vm::host::{HashmapStore, Reply};
use concerto_vm::{Str, Value};

const CHILD_ENV: &str = "CONCERTO_CRASH_CHILD";
const CHILD_TEST: &str = "persistence_crash::crash_child";
const READY: &str = "crash-child: first save done";
const FILE: &str = "state.json";
/// Keys besides the marker, and the length of each value: ~0.5 MiB per state (a save
/// takes ~20 ms in a debug build, ~2 ms optimised).
const KEYS: usize = 32;
const VALUE_LEN: usize = 16 * 1024;
const ITERATIONS: usize = 200;

/// State `A` (values `aaa…`) or `B` (values `bbb…`), marker first.
fn state(marker: char) -> Vec<(Str, Value)> {
    let letter = marker.to_ascii_lowercase();
    let text = Str::from(letter.to_string().repeat(VALUE_LEN));
    let mut entries = vec![(Str::from("state"), Value::str(marker.to_string()))];
    for i in 0..KEYS {
        entries.push((Str::from(format!("k{i:02}")), Value::Str(text.clone())));
    }
    entries
}

/// The child's side: bind the file (loading what the killed predecessors left), then
/// alternate the hashmap between the two states, saving after each switch, until killed.
/// It announces itself on stdout after its first complete save.
#[test]
#[allow(clippy::print_stdout)]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(dir).join(FILE);
    let store = InMemoryStore::with_names(["state"]);
    store.persist(0, &path).unwrap();
    let states = [state('A'), state('B')];
    let started = Instant::now();
    let mut announced = false;
    // A safety stop in case the parent is gone.
    while started.elapsed() < Duration::from_secs(30) {
        for entries in &states {
            match store.hashmap_set_many(MapId(0), entries.clone()) {
                Reply::Ready(r) => r.unwrap(),
                Reply::Pending(_) => panic!("InMemoryStore answered later"),
            }
            store.save(0).unwrap();
            if !announced {
                // The parent's random wait starts after this child's first complete save,
                // so kills spread over later saves whatever the speed of the build.
                println!("{READY}");
                announced = true;
            }
        }
    }
}

/// `Ok(None)`: no file; `Ok(Some(marker))`: a complete state; `Err`: anything else.
fn check(path: &Path) -> Result<Option<char>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = json.as_object().ok_or("not an object")?;
    let marker = match obj.get("state").and_then(|v| v.as_str()) {
        Some("A") => 'A',
        Some("B") => 'B',
        other => return Err(format!("bad marker {other:?}")),
    };
    if obj.len() != KEYS + 1 {
        return Err(format!("{} keys instead of {}", obj.len(), KEYS + 1));
    }
    let expected = marker.to_ascii_lowercase().to_string().repeat(VALUE_LEN);
    for i in 0..KEYS {
        let key = format!("k{i:02}");
        let value = obj
            .get(&key)
            .and_then(|v| v.as_str())
            .ok_or(format!("{key} missing"))?;
        if value != expected {
            return Err(format!("{key} does not belong to state {marker}"));
        }
    }
    Ok(Some(marker))
}

/// A 64-bit linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Starts a child and waits until it has loaded the file and completed one save.
fn start_child(exe: &Path, dir: &Path) -> Child {
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l.contains(READY)));
    if !ready {
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        let status = child.wait().unwrap();
        panic!("the child failed before saving ({status}):\n{err}");
    }
    child
}

#[test]
#[allow(clippy::print_stdout)]
fn killing_a_saving_process_never_leaves_a_corrupt_file() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // this process is a child
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let exe = std::env::current_exe().unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("persistence crash loop seed: {seed}");
    let mut rng = Lcg(seed);

    let started = Instant::now();
    let (mut kills, mut mid_save, mut valid, mut absent, mut corrupt) = (0, 0, 0, 0, 0);
    let mut markers = [0usize; 2];
    for i in 0..ITERATIONS {
        let mut child = start_child(&exe, dir.path());
        std::thread::sleep(Duration::from_millis(rng.next() % 31));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("iteration {i}: the child stopped on its own ({status})");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if !temp_files(&path).is_empty() {
            mid_save += 1;
        }
        match check(&path) {
            Ok(Some(marker)) => {
                valid += 1;
                markers[usize::from(marker == 'B')] += 1;
            }
            Ok(None) => {
                assert_eq!(valid, 0, "iteration {i}: the file vanished after a save");
                absent += 1;
            }
            Err(e) => {
                println!("iteration {i}: corrupt file: {e}");
                corrupt += 1;
            }
        }
    }
    let leftovers = temp_files(&path).len();
    println!(
        "persistence crash loop: {kills} kills, {mid_save} mid-save, {valid} valid, {corrupt} corrupt \
         ({absent} before the first complete save; {} A / {} B; {leftovers} temporary files left; {:.1} s)",
        markers[0],
        markers[1],
        started.elapsed().as_secs_f64()
    );
    assert_eq!(corrupt, 0);
    assert_eq!(valid + absent, kills);
    assert!(valid > 0, "no save ever completed");
    assert!(
        mid_save > 0,
        "no kill landed during a save, so the loop tested nothing"
    );

    // The last child's leftovers neither break a load nor survive it.
    let store = InMemoryStore::new(1);
    store.persist(0, &path).unwrap();
    assert!(temp_files(&path).is_empty());
    match store.hashmap_len(MapId(0)) {
        Reply::Ready(n) => assert_eq!(n.unwrap(), KEYS + 1),
        Reply::Pending(_) => panic!("InMemoryStore answered later"),
    }
}
