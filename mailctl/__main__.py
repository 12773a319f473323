from mailctl.cli import main

if __name__ == "__main__":  # spawned render workers import this module too
    main()
