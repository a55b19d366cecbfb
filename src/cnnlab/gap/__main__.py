from cnnlab.gap import main

if __name__ == "__main__":
    main()
