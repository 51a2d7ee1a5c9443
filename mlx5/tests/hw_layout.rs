//! The hand-written rdma-core declarations of the hardware backend
//! (`src/hw/ffi.rs`) against the real headers: every struct's size and
//! alignment, every field's offset and size, and every constant, as the C
//! compiler computes them (`tests/c/hw_layout.c`).

mod common;

use std::collections::BTreeMap;

/// `name value` lines into a map, refusing duplicates.
fn parse(output: &str) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    for line in output.lines() {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed line from hw_layout.c: {line:?}"));
        let value = value
            .parse()
            .unwrap_or_else(|e| panic!("malformed value in {line:?}: {e}"));
        assert!(
            map.insert(name.to_owned(), value).is_none(),
            "hw_layout.c prints {name} twice"
        );
    }
    map
}

#[test]
fn ffi_layouts_match_the_headers() {
    let exe = common::compile_c("hw_layout");
    let c = parse(&common::run_c(&exe, ""));

    let mut rust = BTreeMap::new();
    for (name, value) in mlx5::layout_table() {
        assert!(
            rust.insert(name.to_owned(), value).is_none(),
            "layout_table has {name} twice"
        );
    }

    let mut problems = Vec::new();
    for (name, &c_value) in &c {
        match rust.get(name) {
            Some(&r) if r == c_value => {}
            Some(&r) => problems.push(format!("{name}: C {c_value}, Rust {r}")),
            None => problems.push(format!(
                "{name}: printed by hw_layout.c, not in layout_table"
            )),
        }
    }
    for name in rust.keys().filter(|k| !c.contains_key(*k)) {
        problems.push(format!(
            "{name}: in layout_table, not printed by hw_layout.c"
        ));
    }
    assert!(
        problems.is_empty(),
        "ffi.rs disagrees with rdma-core's headers:\n{}",
        problems.join("\n")
    );
    // Guard against both sides silently shrinking to nothing.
    assert!(c.len() > 300, "only {} entries compared", c.len());
}
