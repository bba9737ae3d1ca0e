//! `kubectl exec` end to end: a command in a running container, through the node that runs it
//! and relayed through another node; stdout, stderr, stdin and the exit code as kubectl shows
//! them; a terminal with `-it`; clear errors for a container or pod that does not exist.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::workloads::apply;
use crate::support::*;

/// `kubectl exec` with `stdin` fed to it; the whole output, whatever the exit code.
fn exec(ctx: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx, "--request-timeout=20s", "exec"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    let mut input = child.stdin.take().expect("kubectl stdin");
    input
        .write_all(stdin.as_bytes())
        .expect("writing kubectl stdin");
    drop(input);
    child.wait_with_output().expect("waiting for kubectl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn kubectl_exec_runs_in_the_container_on_any_node() {
    let _tn = Testnet::up(2);
    let pod = r#"{"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shell"},
        "spec": {"nodeName": "n2", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "shoal.test/busybox:1",
                                 "command": ["sh", "-c", "echo marker > /tmp/file; sleep 3600"]}]}}"#;
    apply("n1", pod);
    eventually("pod shell Running", Duration::from_secs(60), || {
        let phase = kubectl(
            "n1",
            &["get", "pod", "shell", "-o", "jsonpath={.status.phase}"],
        )?;
        (phase == "Running").then_some(()).ok_or(phase)
    });

    for ctx in ["n2", "n1"] {
        // Streams and the exit code, on the pod's node (n2) and relayed through n1.
        let out = exec(
            ctx,
            &[
                "shell",
                "--",
                "sh",
                "-c",
                "cat /tmp/file; echo to-stderr >&2; exit 3",
            ],
            "",
        );
        assert_eq!(text(&out.stdout), "marker\n", "stdout via {ctx}: {out:?}");
        assert!(
            text(&out.stderr).contains("to-stderr"),
            "stderr via {ctx}: {out:?}"
        );
        assert_eq!(out.status.code(), Some(3), "exit code via {ctx}: {out:?}");

        // stdin reaches the command and its end is seen (cat exits).
        let out = exec(
            ctx,
            &["-i", "shell", "--", "sh", "-c", "tr a-z A-Z"],
            "hello\nworld\n",
        );
        assert!(out.status.success(), "stdin via {ctx}: {out:?}");
        assert_eq!(text(&out.stdout), "HELLO\nWORLD\n", "stdin via {ctx}");

        // Arguments with spaces and percent signs arrive whole.
        let out = exec(ctx, &["shell", "--", "printf", "%s|", "a b", "c"], "");
        assert!(out.status.success(), "printf via {ctx}: {out:?}");
        assert_eq!(text(&out.stdout), "a b|c|");
    }

    // `-it` from a terminal (util-linux `script` gives kubectl one): the command gets a
    // terminal of the container's own, of the client's size.
    for ctx in ["n2", "n1"] {
        let kubectl_cmd = format!(
            "stty cols 100 rows 30; kubectl --kubeconfig {} --context {ctx} exec -it shell -- sh -c 'tty; stty size; exit 5'",
            kubeconfig().display()
        );
        let out = Command::new("script")
            .args(["-qec", &kubectl_cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("running script (util-linux)");
        let stdout = text(&out.stdout);
        assert!(stdout.contains("/dev/pts/"), "tty via {ctx}: {out:?}");
        assert!(
            stdout.contains("30 100"),
            "terminal size via {ctx}: {out:?}"
        );
        assert_eq!(
            out.status.code(),
            Some(5),
            "exit code with a tty via {ctx}: {out:?}"
        );
    }

    // A container name the pod does not have, and a pod that does not exist.
    let out = exec("n1", &["shell", "-c", "nope", "--", "true"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container nope is not valid for pod shell"),
        "{out:?}"
    );
    let out = exec("n1", &["ghost", "--", "true"], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("not found"), "{out:?}");
}
