fn main() {
    println!("leader-labeler {}", env!("CARGO_PKG_VERSION"));
}
