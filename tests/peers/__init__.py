"""Real peers (OpenSSH sshd, a test adbd behind the real adb server) for device tests."""
