//! `kmm browse` driven end to end in a real terminal: tmux gives kmm a pseudo-terminal on
//! stdin and stdout; the test reads the screen, types a number and `y`, and checks the install
//! on disk and in the registry. Skipped (with a message) only where tmux is missing; `.ci/run`
//! installs it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fake_hub::FakeHub;
use crate::verbs::{Workspace, bert_repo};

/// A tmux server of its own (socket name unique per test run), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    fn screen(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-J", "-S", "-200", "-t", "browse"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn send(&self, keys: &str) {
        let status = self
            .command()
            .args(["send-keys", "-t", "browse", "-l", keys])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self
            .command()
            .args(["send-keys", "-t", "browse", "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until the screen shows `text` (a generous deadline only turns a hang into a
    /// failure; nothing here measures time).
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "`{text}` never showed; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[test]
fn browse_picks_confirms_and_installs_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipping: tmux is not installed (.ci/run installs it)");
        return;
    }
    let hub = FakeHub::start(vec![bert_repo("acme/alpha"), bert_repo("acme/bert")]);
    let ws = Workspace::new(&hub, None);
    let kmm = assert_cmd::cargo::cargo_bin("kmm");
    let done = ws.path().join("exit-code");
    let mut script = format!(
        "cd {} && env",
        shell_quote(&ws.path().display().to_string())
    );
    for name in crate::support::SCRUBBED_ENV {
        script.push_str(&format!(" -u {name}"));
    }
    for (name, value) in ws.env() {
        script.push_str(&format!(" {name}={}", shell_quote(&value)));
    }
    script.push_str(&format!(
        " {} browse --owner acme; echo $? > {}; sleep 600",
        shell_quote(&kmm.display().to_string()),
        shell_quote(&done.display().to_string())
    ));
    let tmux = Tmux {
        socket: format!("kmm-browse-{}", std::process::id()),
    };
    let status = tmux
        .command()
        .args([
            "new-session",
            "-d",
            "-s",
            "browse",
            "-x",
            "160",
            "-y",
            "50",
            &script,
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let screen = tmux.wait_for("Select a model [1-2, q to quit]:");
    assert!(
        screen.contains("acme/alpha") && screen.contains("acme/bert"),
        "{screen}"
    );
    tmux.send("7");
    tmux.wait_for("Please type a number from 1 to 2");
    tmux.send("2");
    let screen = tmux.wait_for("Download acme/bert? [y/N]:");
    assert!(
        screen.contains("model.safetensors") && screen.contains("140.0 kB"),
        "{screen}"
    );
    assert!(screen.contains("transformers/acme/bert"), "{screen}");
    tmux.send("y");

    let deadline = Instant::now() + Duration::from_secs(120);
    while !done.exists() {
        assert!(
            Instant::now() < deadline,
            "browse did not finish:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = fs_err::read_to_string(&done).unwrap();
    assert_eq!(code.trim(), "0", "screen:\n{}", tmux.screen());
    let installed = ws.models().join("transformers/acme/bert");
    assert_eq!(
        fs_err::read(installed.join("model.safetensors")).unwrap(),
        b"weights".repeat(20_000)
    );
    assert!(Path::new(&installed.join("tokenizer/vocab.txt")).is_file());
    let registry = ws.registry();
    assert_eq!(registry["acme/bert"]["library"], "transformers");
    assert!(
        registry.get("acme/alpha").is_none(),
        "only the picked model"
    );
}
