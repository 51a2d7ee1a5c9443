//! Build script (UCX bindings are generated here once the ucx-am backend
//! lands).
fn main() {}
