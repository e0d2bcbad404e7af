import sys

from . import install, installed, python

if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "install"
    if command == "install":
        install()
    elif command == "status":
        print(f"installed: {python()}" if installed() else "not installed")
        sys.exit(0 if installed() else 1)
    else:
        sys.exit("usage: python -m tests.nemo_gym_reference [install|status]")
