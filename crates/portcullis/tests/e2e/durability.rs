//! SIGKILL in the middle of writes: every acknowledged user survives and the store opens cleanly.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::Instance;

#[test]
fn sigkill_during_a_loop_of_user_adds_loses_no_acknowledged_user() {
    let i = Instance::new();
    i.run(&["group", "add", "user"]).ok();
    let mut acknowledged = Vec::new();
    let mut killed = 0;
    // Vary the kill point from "before the store is open" to "after the commit", so some kills
    // land inside the write transaction.
    for n in 0..40u64 {
        let name = format!("user{n:03}");
        let mut child = i
            .command(&["user", "add", &name, "--group", "user"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(5 + (n * 7) % 80));
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().expect("wait");
        if out.status.success() {
            acknowledged.push(name);
        } else {
            killed += 1;
        }
    }
    eprintln!("{} acknowledged, {killed} killed", acknowledged.len());
    assert!(killed > 0, "the test must actually interrupt some writes");
    let check = i.run(&["store", "check"]).ok();
    assert!(check.contains(": ok"), "{check}");
    let present = i.usernames();
    for name in &acknowledged {
        assert!(
            present.contains(name),
            "{name} was acknowledged but is missing"
        );
    }
    // And the store still takes writes.
    i.run(&["user", "add", "after-the-storm"]).ok();
}
