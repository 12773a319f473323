if __name__ == "__main__":  # spawned render workers import this module too: they need no CLI
    from mailctl.cli import main

    main()
