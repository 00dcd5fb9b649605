//! L2 benchmark (filled in next).
fn main() {}
