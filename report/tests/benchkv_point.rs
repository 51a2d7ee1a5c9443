//! The report reads benchkv's point JSON: a real point (from a
//! `scripts/benchkv.sh` run, `fixtures/benchkv-point.json`) parses into
//! the figures the report prints, and another schema or a missing field
//! is refused.

use report::input::{BENCHKV_SCHEMA, kv_point};

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/benchkv-point.json")).unwrap()
}

#[test]
fn a_real_point_parses_into_its_figures() {
    let v = fixture();
    assert_eq!(v["schema"], BENCHKV_SCHEMA);
    let p = kv_point(&v).unwrap();
    assert_eq!(p.backend, "copyrpc");
    assert_eq!((p.clients, p.depth, p.daemons, p.ranks), (1, 1, 1, 2));
    assert!(!p.client_procs);
    assert_eq!(p.p50_ns, v["total"]["p50_ns"].as_u64().unwrap());
    assert_eq!(p.p999_ns, v["total"]["p999_ns"].as_u64().unwrap());
    assert_eq!(
        p.run_ops_per_s.len(),
        v["run_ops_per_s"].as_array().unwrap().len()
    );
    assert!(p.run_ops_per_s.iter().all(|&x| x > 0.0));
    assert!(p.transport[0].contains("mlx5 soft"), "{:?}", p.transport);
    assert!(p.local + p.flux + p.remote > 0);
    assert_eq!(p.device_selection, "soft:manual");
}

/// benchkv writes the JSON of a run that failed `--verify` or got bad
/// statuses (to look at), and exits non-zero; its figures are not read.
#[test]
fn a_point_of_a_failed_run_is_refused() {
    for field in ["mismatches", "bad_status"] {
        let mut v = fixture();
        v[field] = 3.into();
        let e = kv_point(&v).unwrap_err();
        assert!(e.contains("failed run"), "{field}: {e}");
    }
    let mut v = fixture();
    v["runs"][0]["ranks"][1]["ops"] = 0.into();
    let e = kv_point(&v).unwrap_err();
    assert!(e.contains("completed no operation"), "{e}");
}

#[test]
fn another_schema_or_a_missing_field_is_refused() {
    let mut v = fixture();
    v["schema"] = "benchkv/1".into();
    assert!(kv_point(&v).unwrap_err().contains("benchkv/1"));
    for (path, what) in [
        (&["metadata", "hosts"][..], "metadata.hosts"),
        (&["metadata", "transport"][..], "metadata.transport"),
        (&["metadata", "mpi"][..], "metadata.mpi"),
        (&["total", "p99_ns"][..], "total.p99_ns"),
        (&["daemons"][..], "daemons"),
        (&["mismatches"][..], "mismatches"),
    ] {
        let mut v = fixture();
        let (last, parents) = path.split_last().unwrap();
        let mut o = &mut v;
        for k in parents {
            o = &mut o[*k];
        }
        o.as_object_mut().unwrap().remove(*last);
        let e = kv_point(&v).unwrap_err();
        assert!(e.contains(what), "{path:?}: {e}");
    }
}
