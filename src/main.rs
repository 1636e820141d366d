fn main() {
    println!("vhost-ext4");
}
