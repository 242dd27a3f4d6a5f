use super::*;
use crate::state::NewRun;

#[test]
fn the_private_work_folder_is_absolute_and_private_whatever_the_state_path() {
    use std::os::unix::fs::PermissionsExt;
    // The default --state is relative (state/runbook.db); terraform runs elsewhere.
    let relative =
        StateLocation::Sqlite(PathBuf::from(format!("target/runbook-work-test-{}/runbook.db", std::process::id())));
    let dir = work_dir(&relative).unwrap();
    assert!(dir.is_absolute(), "{}", dir.display());
    assert!(dir.ends_with(format!("target/runbook-work-test-{}/work", std::process::id())), "{}", dir.display());
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    // Files of processes that are gone are swept; ours stay.
    std::fs::write(dir.join("999999999-T2.4.tfplan"), "secret").unwrap();
    let mine = dir.join(format!("{}-T2.4.tfplan", std::process::id()));
    std::fs::write(&mine, "ours").unwrap();
    work_dir(&relative).unwrap();
    assert!(!dir.join("999999999-T2.4.tfplan").exists());
    assert!(mine.exists());
    // A dead run's terraform may write its plan after the first sweep: the run's end sweeps
    // again, its own files too.
    std::fs::write(dir.join("999999998-T2.4.tfplan"), "secret").unwrap();
    sweep(&dir, true);
    assert!(!dir.join("999999998-T2.4.tfplan").exists());
    assert!(!mine.exists());
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// A state DB with a deploy stopped on `local`, a rollback on `local` (run 2), an emergency
/// restart on the running revision, which rolls nothing back (run 3), and a rollback on
/// another environment (run 4).
fn runs_with_a_rollback(name: &str) -> (PathBuf, StateDb) {
    let dir = std::env::temp_dir().join(format!("runbook-ack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("state.db");
    let mut db = StateDb::open(&path).unwrap();
    let vars = BTreeMap::new();
    for (runbook, env) in
        [("sprint-2", "local"), ("rollback", "local"), ("rollback", "local"), ("rollback", "armitage")]
    {
        let run = db
            .create_run(&NewRun {
                runbook,
                env,
                runbook_hash: "h",
                inputs_hash: "i",
                vars: &vars,
                operator: "op",
                host: "host",
                steps: &["S".to_string()],
            })
            .unwrap();
        if runbook == "rollback" {
            let restart = run == 3;
            let marked = Event::RollbackMarked {
                step: "R1".into(),
                service: "dixie-armitage".into(),
                from_revision: if restart { "1" } else { "2" }.into(),
                to_revision: "1".into(),
                operator: "op".into(),
                host: "host".into(),
                emergency: restart,
                desired: restart.then_some(1),
            };
            db.record(Some(run), &marked).unwrap();
        }
    }
    (path, db)
}

fn globals(ack: Option<i64>) -> Globals {
    Globals {
        project: PathBuf::from("."),
        state: StateLocation::Sqlite(PathBuf::from("unused.db")),
        mode: Mode::Plain,
        approver: Approver::Withheld,
        acknowledged_rollback: ack,
    }
}

#[test]
fn an_acknowledgement_that_applies_to_nothing_is_bad_input() {
    let (_path, db) = runs_with_a_rollback("apply");
    let deploy = db.run(1).unwrap();
    assert!(check_acknowledgement(&globals(None), &db, "local", Some(&deploy)).is_ok());
    assert!(check_acknowledgement(&globals(Some(2)), &db, "local", Some(&deploy)).is_ok());
    for (ack, why) in [
        (0, "no such run"),
        (99, "no such run"),
        (1, "a deploy, not a rollback"),
        (3, "an emergency restart on the running revision"),
        (4, "a rollback on another environment"),
    ] {
        let err = check_acknowledgement(&globals(Some(ack)), &db, "local", Some(&deploy)).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{why}: {err}");
        assert!(err.to_string().contains(&format!("run {ack} rolled nothing back on local")), "{why}: {err}");
    }
    // The rollback run itself is done: resuming it with an acknowledgement acknowledges nothing.
    let mut done = db.run(2).unwrap();
    done.status = RunState::Done;
    let err = check_acknowledgement(&globals(Some(2)), &db, "local", Some(&done)).unwrap_err();
    assert!(err.to_string().contains("run 2 of rollback is done, so there is nothing to acknowledge"), "{err}");
}

#[test]
fn the_state_location_is_told_once_and_a_postgres_state_keeps_its_work_in_the_state_folder() {
    let pg = StateLocation::parse(Path::new("postgresql://u@127.0.0.1:5432/db"));
    assert!(matches!(pg, StateLocation::Postgres(_)), "{pg:?}");
    assert_eq!(pg.work_folder().unwrap(), std::path::absolute("state/work").unwrap());
    let file = StateLocation::parse(Path::new("runbook.db"));
    assert_eq!(file, StateLocation::Sqlite("runbook.db".into()));
    assert_eq!(file.work_folder().unwrap(), std::path::absolute("work").unwrap());
    let nested = StateLocation::parse(Path::new("/srv/runbook/state.db"));
    assert_eq!(nested.work_folder().unwrap(), Path::new("/srv/runbook/work"));
}
