fn main() {
    println!("chat-node: not implemented yet");
}
