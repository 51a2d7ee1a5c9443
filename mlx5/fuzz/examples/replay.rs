//! Replays fuzz inputs without libFuzzer, printing what they decode to
//! (for reading a crash report):
//!
//! ```sh
//! cargo run --manifest-path mlx5/fuzz/Cargo.toml --example replay -- wqe FILE...
//! ```

use mlx5_fuzz::input::Reader;
use mlx5_fuzz::wqe::Op;

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay wqe|frame FILE...");
    for path in args {
        let data = std::fs::read(&path).expect("read input");
        println!("== {path} ({} bytes)", data.len());
        match target.as_str() {
            "wqe" => {
                let mut r = Reader::new(&data);
                while !r.is_empty() {
                    println!("{:?}", Op::decode(&mut r));
                }
                mlx5_fuzz::wqe::run(&data);
            }
            "frame" => {
                let mut r = Reader::new(&data);
                let (flags, split) = (r.u8(), r.u16());
                println!(
                    "flags {flags:#x}, split at {split}, bytes {:02x?}",
                    r.rest()
                );
                mlx5_fuzz::frame::run(&data);
            }
            t => panic!("unknown target {t}"),
        }
        println!("ok");
    }
}
