fn main() {
    println!("supervise: under construction");
}
