fn main() {
    println!("chat-loadgen: not implemented yet");
}
