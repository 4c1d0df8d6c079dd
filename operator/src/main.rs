fn main() {
    println!("chat-operator: not implemented yet");
}
